"""SVG snapshots of every screen at 80x24 and 160x50, in two themes.

Deterministic by construction: an empty state dir (no server), a fixed model
path that does not exist (no doctor verdict), no network.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from backend.config import ServeProfile, Settings, SpeculativeSettings
from backend.supervisor import ServerSupervisor
from backend.tinymodel import build_tiny_model
from tui.app import QtuiApp, make_app
from tui.screens.profile_editor import ProfileEditorScreen

SIZES = [(80, 24), (160, 50)]
SETTLING = ("mtp-doctor", "bench-list", "profile-editor-fit")
"""Workers whose result the screen shows: a snapshot waits for them."""
THEMES = ["qtui-dark", "qtui-light"]


# A real checkpoint at a path that is the same on every machine, so screens that
# check the model (profile editor, MTP doctor) render the same each run.
SNAPSHOT_MODEL = Path(tempfile.gettempdir()) / "qtui-snapshot-models" / "tiny"


def snapshot_app(theme: str, state_dir: Path) -> QtuiApp:
    build_tiny_model(SNAPSHOT_MODEL)
    profiles = {
        "tiny-cpu": ServeProfile(
            model=str(SNAPSHOT_MODEL),
            served_model_name="tiny",
            port=8000,
            max_model_len=512,
            speculative=SpeculativeSettings(toggle_method="ngram", num_speculative_tokens=2),
        ),
        "qwen-mtp": ServeProfile(
            model="/models/Qwen3.6-27B-int4-AutoRound",
            port=8888,
            kv_cache_dtype="fp8",
            speculative=SpeculativeSettings(method="mtp"),
        ),
    }
    settings = Settings(vllm="vllm", profiles=profiles, default_profile="tiny-cpu", theme=theme)
    return make_app(
        settings=settings,
        supervisor=ServerSupervisor(None, state_dir=state_dir),
        poll_interval_s=60,
    )


def keep_example_bench_result() -> None:
    """A kept A/B result with fixed figures (the bench screen shows the newest)."""
    from backend.bench import BenchRun, HalfResult, Measurement, PromptResult, save_run

    def half(spec: str, rates: list[float], accept: float | None) -> HalfResult:
        prompts = []
        for (name, text, tokens), rate in zip(CARD, rates, strict=True):
            seconds = tokens / rate
            run = Measurement(
                ttft_s=0.05, decode_s=seconds, tokens=tokens, usage_tokens_per_s=rate,
                engine_decode_s=seconds, counter_tokens_per_s=rate, acceptance_rate=accept,
                mean_acceptance_length=None if accept is None else 1 + accept,
            )  # fmt: skip
            prompts.append(PromptResult(name, text, tokens, [run]))
        return HalfResult(spec, prompts)

    run = BenchRun(
        id="20261130-120000", created="2026-11-30T12:00:00", url="http://127.0.0.1:8000",
        profile_name="tiny-mtp", profile=None, vllm_version="0.32.0", device="1x NVIDIA H200",
        repeat=3, concurrency=1,
        halves=[
            half("mtp:1", [61.2, 59.8, 58.1, 60.4], 0.88),
            half("off", [32.1, 31.8, 31.5, 32.0], None),
        ],
    )  # fmt: skip
    save_run(run)


CARD = [
    ("haiku", "Write a haiku", 128),
    ("quantum", "Explain quantum computing in 3 paragraphs", 256),
    ("deep-learning", "Write 8 paragraphs about deep learning history", 1024),
    ("arithmetic", "What is 127*83? Show reasoning", 256),
]


async def _settle(pilot: Pilot[Any]) -> None:
    await pilot.pause()
    for _ in range(100):  # the status bar says "… checking" until the first poll
        if not isinstance(pilot.app, QtuiApp) or pilot.app.server_status is not None:
            break
        await pilot.pause(0.05)
    for _ in range(100):  # the doctor's verdict lands in the status bar; wait for it
        if not any(w.group in SETTLING for w in pilot.app.workers if not w.is_finished):
            break
        await pilot.pause(0.05)
    screen = pilot.app.screen
    for text_input in screen.query(Input):  # a blinking cursor would make snapshots flaky
        text_input.cursor_blink = False
    for _ in range(100):  # the profile editor's diff waits for its first look at the server
        if not isinstance(screen, ProfileEditorScreen) or screen.running is not None:
            break
        await pilot.pause(0.05)
    await pilot.pause()


def _keys(*keys: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run(pilot: Pilot[Any]) -> None:
        await _settle(pilot)
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        await _settle(pilot)

    return run


SCREENS: dict[str, tuple[str, ...]] = {
    "server": (),
    "chat": ("c",),
    "keys": ("question_mark",),
    "profile_picker": ("p",),
    "profile_editor": ("e",),
    "quantize": ("a",),
    "bench": ("b",),
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen_snapshot(
    snap_compare: Any, tmp_path: Path, screen: str, theme: str, size: tuple[int, int]
) -> None:
    app = snapshot_app(theme, tmp_path / "state")
    if screen == "bench":
        keep_example_bench_result()
    assert snap_compare(app, terminal_size=size, run_before=_keys(*SCREENS[screen]))
