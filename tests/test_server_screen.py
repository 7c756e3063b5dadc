"""Whole-app Pilot tests of the Server screen at 80x24 against the real vLLM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import httpx
from textual import events
from textual.widgets import Input, Static

from backend.config import Settings, cpu_profile
from backend.engine import Engine
from backend.supervisor import Phase, ServerSupervisor, group_members
from tests.conftest import engine_spec, free_port
from tui.app import CONTROL_GROUP, QtuiApp, make_app
from tui.screens.confirm import ConfirmScreen
from tui.widgets.status_bar import ServerStatusBar


def build_app(model: Path, engine: Engine, state_dir: Path) -> QtuiApp:
    settings = Settings(
        vllm=engine_spec(),
        profiles={"tiny-cpu": cpu_profile(str(model), port=free_port())},
        default_profile="tiny-cpu",
    )
    return make_app(
        settings=settings,
        supervisor=ServerSupervisor(engine, state_dir=state_dir),
        poll_interval_s=0.2,
    )


async def finish_control(app: QtuiApp) -> None:
    """Wait for the start/stop/restart worker the last key launched."""
    for worker in list(app.workers):
        if worker.group == CONTROL_GROUP:
            await worker.wait()


async def bar_shows(app: QtuiApp, phase: Phase, timeout: float = 10) -> str:
    bar = app.screen.query_one(ServerStatusBar)
    for _ in range(int(timeout / 0.1)):
        text = str(bar.render())
        if phase.value in text:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"status bar never showed {phase.value}: {bar.render()}")


async def test_start_toggle_stop_by_keys_at_80x24(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    sup = app.supervisor
    async with app.run_test(size=(80, 24)) as pilot:
        await bar_shows(app, Phase.STOPPED)
        assert "tiny-cpu" in str(app.screen.query_one(ServerStatusBar).render())

        await pilot.press("s")
        await finish_control(app)
        assert sup.status().phase == Phase.READY
        first = sup.load_record()
        assert first is not None and first.spec == "off"
        await bar_shows(app, Phase.READY)
        # qtui fit's prediction beside what vLLM allocated, read from the real log.
        readout = app.screen.query_one("#startup-readout", Static)
        for _ in range(200):
            if "vLLM allocated" in str(readout.render()):
                break
            await asyncio.sleep(0.1)
        shown = str(readout.render())
        assert "fit: predicted 524,288 KV tokens, vLLM allocated 524,288 ✓" in shown, shown

        await pilot.press("m")
        await finish_control(app)
        second = sup.load_record()
        assert second is not None and second.spec == "ngram" and second.pid != first.pid
        assert group_members(first.pgid) == []
        metrics = httpx.get(f"{second.url}/metrics", timeout=5).text
        assert "vllm:spec_decode_num_drafts_total" in metrics
        text = await bar_shows(app, Phase.READY)
        assert "spec ngram" in text

        await pilot.press("x")  # a running server asks first; n keeps it
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert sup.status().phase == Phase.READY and sup.load_record() == second
        await pilot.press("x", "y")
        await finish_control(app)
        assert sup.status().phase == Phase.STOPPED
        assert group_members(second.pgid) == []
        await bar_shows(app, Phase.STOPPED)


async def test_toggle_while_stopped_changes_the_next_start(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("m")
        await pilot.pause()
        assert app.profile is not None and app.profile.speculative.method == "ngram"
        assert app.supervisor.load_record() is None  # nothing was started
        await pilot.press("m")
        await pilot.pause()
        assert app.profile.speculative.method == "off"


async def test_failed_start_shows_the_reason(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model / "missing", engine, tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        for worker in list(app.workers):
            if worker.group == CONTROL_GROUP:
                await asyncio.wait_for(_settle(worker), timeout=10)
        await pilot.pause()
        messages = [n.message for n in app._notifications]
        assert any("does not exist" in m for m in messages), messages


async def _settle(worker: object) -> None:
    with contextlib.suppress(Exception):
        await worker.wait()  # type: ignore[attr-defined]


async def test_keys_typed_right_after_c_reach_the_chat_input(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        server_screen = app.screen
        # As a fast typist's terminal sends them: no pause between `c` and the text.
        for key in "cexact cue":
            app.post_message(events.Key("space" if key == " " else key, key))
        await pilot.pause(0.2)
        assert app.screen is server_screen, "`e` or `x` reached the screen's bindings"
        assert server_screen.query_one("#chat-input", Input).value == "exact cue"


async def test_a_frozen_server_neither_delays_the_panel_nor_holds_a_key(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    """SIGSTOP: the port accepts, /health never answers (a GPU hang looks the same).

    The first frame comes before any /health answer (the bar says "… checking", no
    poll has come back), the bar then says "not responding", `x` asks at once (it reads
    the last poll, not a new /health call), and the stop still ends the whole group.
    How fast, beside a bare Textual app, is bench/bench_panel.py's to measure.
    """
    state = tmp_path / "state"
    app = build_app(tiny_model, engine, state)
    sup = app.supervisor
    sup.start("tiny-cpu", app.settings.all_profiles()["tiny-cpu"], timeout_s=300)
    record = sup.load_record()
    assert record is not None
    os.killpg(record.pgid, signal.SIGSTOP)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            bar = app.screen.query_one(ServerStatusBar)
            assert app.server_status is None and "… checking" in str(bar.render())
            await bar_shows(app, Phase.NOT_RESPONDING, timeout=30)
            await pilot.press("x")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await pilot.pause()
            await finish_control(app)
            await bar_shows(app, Phase.STOPPED, timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pgid, signal.SIGCONT)
        sup.stop()
    assert group_members(record.pgid) == []
