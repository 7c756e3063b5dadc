"""Pilot tests of the Quantize screen at 80x24 with real AutoRound on CPU (tiny Qwen3.5)."""

from __future__ import annotations

import asyncio
import os
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, ProgressBar, Select, Static

from backend import paths
from backend.config import Settings
from backend.gpu import GpuSampler
from backend.quantize import FinishReport, JobPhase, QuantizeJob, QuantizeProgress, suggest_profile
from backend.supervisor import ServerSupervisor, group_members
from backend.tiny_qwen35 import TinyQwen35Shape, build_tiny_qwen35, write_calibration_jsonl
from tests.test_gpu import GIB, FakeGpu, FakeNvml
from tui.app import QtuiApp, make_app
from tui.screens.confirm import ConfirmScreen
from tui.screens.quantize import WATCH_GROUP, QuantizeScreen

REPO = Path(__file__).resolve().parent.parent

FOUR_BLOCKS = TinyQwen35Shape(num_hidden_layers=4)
"""Four blocks to quantize, so progress has a middle to be seen in."""


def quant_python() -> str:
    return os.environ.get("QTUI_QUANT_PYTHON") or str(REPO / ".venv-quant" / "bin" / "python")


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("quantize-screen")
    model = build_tiny_qwen35(base / "tiny-qwen35", FOUR_BLOCKS)
    return model, write_calibration_jsonl(base / "calib.jsonl", samples=16)


def build_app(tmp_path: Path, poll_interval_s: float = 0.25) -> QtuiApp:
    return make_app(
        settings=Settings(quant_python=quant_python()),
        supervisor=ServerSupervisor(None, state_dir=tmp_path / "server-state"),
        poll_interval_s=poll_interval_s,
    )


async def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Wait for the external job (a real process: there is no worker to await)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def type_into(pilot: Pilot[int], screen: QuantizeScreen, field_id: str, text: str) -> None:
    screen.query_one(f"#{field_id}", Input).focus()
    await pilot.press(*text)


async def choose(pilot: Pilot[int], screen: QuantizeScreen, select_id: str, downs: int) -> None:
    """Open a Select, move the highlight `downs` rows from the current value, pick it."""
    screen.query_one(f"#{select_id}", Select).focus()
    await pilot.press("enter", *(["down"] * downs), "enter")


async def fill_form(
    pilot: Pilot[int], screen: QuantizeScreen, model: Path, calib: Path, out: Path, iters: int
) -> None:
    await type_into(pilot, screen, "model-dir", str(model))
    await type_into(pilot, screen, "output-dir", str(out))
    await choose(pilot, screen, "preset", downs=2)  # default, best, light
    assert screen.query_one("#preset", Select).value == "light"
    await type_into(pilot, screen, "iters", str(iters))
    await type_into(pilot, screen, "nsamples", "8")
    await type_into(pilot, screen, "seqlen", "32")
    await type_into(pilot, screen, "dataset", str(calib))
    await pilot.pause()
    assert screen.query_one("#device", Select).value == "cpu"  # no GPU here: the probe said so
    assert not screen.query_one("#form-problem", Static).has_class("shown")


def text_of(screen: QuantizeScreen, widget_id: str) -> str:
    return str(screen.query_one(f"#{widget_id}", Static).render())


@pytest.mark.quant
async def test_quantize_from_form_to_serve_profile(
    qwen35: tuple[Path, Path], tmp_path: Path
) -> None:
    model, calib = qwen35
    app = build_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = QuantizeScreen()
        await app.push_screen(screen)
        await fill_form(pilot, screen, model, calib, tmp_path / "out", iters=2)
        await pilot.press("ctrl+s")
        await until(lambda: screen.job_id is not None, 30, "the job to show")
        assert screen.has_class("-job")  # 80 columns: the job panel replaces the form
        assert "no NVIDIA GPU" in text_of(screen, "job-gpu")
        first_job = screen.job_id

        # Closing the screen leaves the job running; a new screen re-attaches to it.
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is not screen
        assert all(w.group != WATCH_GROUP or w.is_cancelled for w in app.workers)
        job = QuantizeJob.current()
        assert job is not None and job.record.job_id == first_job and job.is_running()
        reopened = QuantizeScreen()
        await app.push_screen(reopened)
        await until(lambda: reopened.job_id == first_job, 10, "the re-opened screen to attach")
    # qtui quit: the job runs on, and a new qtui picks it up from the state file.
    assert job.is_running(), job.log_tail()[-2000:]
    app = build_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = QuantizeScreen()
        await app.push_screen(screen)
        bar = screen.query_one("#job-bar", ProgressBar)
        seen: list[tuple[float, float | None]] = []

        def done() -> bool:
            seen.append((bar.progress, bar.total))
            return screen.report is not None or screen.phase in (
                JobPhase.FAILED,
                JobPhase.CANCELLED,
            )

        await until(done, 400, "the job to finish")
        assert screen.job_id == first_job
        assert screen.phase is JobPhase.DONE, text_of(screen, "job-error") + job.log_tail()[-2000:]
        assert any(total == 4 and 0 < done < 4 for done, total in seen), seen
        assert (bar.progress, bar.total) == (4, 4)
        assert "MTP doctor: ready" in text_of(screen, "job-result")
        assert screen.query_one("#job-log").line_count > 0  # type: ignore[attr-defined]

        # Create the suggested serve profile: Enter in the name field.
        name_input = screen.query_one("#profile-name", Input)
        name = name_input.value
        assert name and screen.report is not None
        name_input.focus()
        await pilot.press("enter")
        await pilot.pause()
        on_disk = tomllib.loads(paths.config_file().read_text())
        profile = on_disk["profiles"][name]
        assert profile["model"] == screen.report.output_dir
        assert profile["speculative"]["method"] == "mtp"
        assert app.profile_name == name
        # The same name again is refused with a one-line reason, nothing is overwritten.
        await pilot.press("enter")
        await pilot.pause()
        assert "exists already" in text_of(screen, "job-error")

        # n brings the form back, filled from the re-attached job: one edit to run it again.
        screen.query_one("#job-log").focus()
        await pilot.press("n")
        await pilot.pause()
        assert not screen.has_class("-job")
        assert Path(screen.query_one("#model-dir", Input).value) == model.resolve()
        assert screen.query_one("#preset", Select).value == "light"
        assert screen.query_one("#iters", Input).value == "2"


@pytest.mark.quant
async def test_cancel_from_the_screen_leaves_no_process(
    qwen35: tuple[Path, Path], tmp_path: Path
) -> None:
    model, calib = qwen35
    app = build_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = QuantizeScreen()
        await app.push_screen(screen)
        await fill_form(pilot, screen, model, calib, tmp_path / "out", iters=400)
        await pilot.press("ctrl+s")
        working = (JobPhase.CALIBRATING, JobPhase.QUANTIZING)
        await until(lambda: screen.phase in working, 300, "AutoRound to start working")
        job = QuantizeJob.current()
        assert job is not None

        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # no: the job keeps running
        await pilot.pause()
        assert app.screen is screen and job.is_running()

        await pilot.press("x")
        await pilot.pause()
        await pilot.press("y")
        await until(lambda: screen.phase is JobPhase.CANCELLED, 60, "the job to be cancelled")
        await until(lambda: "cancelled" in text_of(screen, "job-error"), 10, "the cancel line")
        assert group_members(job.record.pgid) == []
        assert not list((tmp_path / "out").glob("*/config.json"))


async def test_bad_input_shows_a_line_and_starts_nothing(tmp_path: Path) -> None:
    app = build_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = QuantizeScreen()
        await app.push_screen(screen)
        await type_into(pilot, screen, "iters", "0")
        assert "Iters: must be at least 1" in text_of(screen, "form-problem")
        await type_into(pilot, screen, "model-dir", str(tmp_path / "missing"))
        assert "does not exist" in text_of(screen, "form-problem")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "model dir:" in text_of(screen, "form-problem")
        assert app.focused is screen.query_one("#model-dir")
        assert QuantizeJob.current() is None and not screen.has_class("-job")
        # Nothing typed is lost.
        assert screen.query_one("#iters", Input).value == "0"
        assert screen.query_one("#model-dir", Input).value == str(tmp_path / "missing")
        # Esc in a field only leaves the field; the next one closes the screen.
        await pilot.press("escape")
        assert app.screen is screen and app.focused is None
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is not screen


async def test_a_profile_the_config_cannot_take_is_reported_and_kept(
    tmp_path: Path, read_only_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's end arrives as the screen's own message; the report is what finish() makes."""
    output = str(tmp_path / "tiny-w4a16")
    report = FinishReport(
        output_dir=output,
        verdict="ready",
        reason="test",
        profile=suggest_profile(output, mtp_ready=True).model_dump(exclude_defaults=True),
    )
    app = build_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = QuantizeScreen()
        await app.push_screen(screen)
        screen.job_id = "job-1"
        done = QuantizeProgress(phase=JobPhase.DONE, output_dir=output)
        screen.post_message(QuantizeScreen.JobEnded("job-1", done, report, None))
        await pilot.pause()
        name_input = screen.query_one("#profile-name", Input)
        assert name_input.value == "tiny-w4a16"
        before = app.settings.model_dump()

        name_input.focus()
        await pilot.press("enter")
        await pilot.pause()
        problem = text_of(screen, "job-error")
        assert f"could not save the config: cannot write {read_only_config}" in problem
        assert app.settings.model_dump() == before
        assert app.profile_name != "tiny-w4a16"
        # Nothing lost: the name stays, the button too; once the config can be written, it saves.
        assert name_input.value == "tiny-w4a16"
        assert not screen.query_one("#create-profile", Button).disabled
        monkeypatch.setenv("QTUI_CONFIG", str(tmp_path / "writable" / "config.toml"))
        await pilot.press("enter")
        await pilot.pause()
        assert not screen.query_one("#job-error", Static).has_class("shown")
        assert app.profile_name == "tiny-w4a16"
        saved = tomllib.loads(paths.config_file().read_text())["profiles"]["tiny-w4a16"]
        assert saved["model"] == output and saved["speculative"]["method"] == "mtp"


async def test_gpu_memory_line_and_cuda_default_with_a_gpu(tmp_path: Path) -> None:
    """NVML cannot exist here: a stand-in at its boundary, the rest is real."""
    nvml = FakeNvml([FakeGpu("NVIDIA H200", used=10 * GIB, total=140 * GIB)])
    app = build_app(tmp_path)
    async with app.run_test(size=(160, 50)) as pilot:
        screen = QuantizeScreen(sampler=GpuSampler(nvml=nvml))
        await app.push_screen(screen)
        await until(lambda: "GPU0" in text_of(screen, "job-gpu"), 10, "a GPU reading")
        assert "GPU0 10.0/140.0 GiB" in text_of(screen, "job-gpu")
        assert screen.query_one("#device", Select).value == "cuda"
        assert screen.has_class("-wide")  # both the form and the job panel show
        await pilot.pause()
