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


async def _settle(pilot: Pilot[Any]) -> None:
    await pilot.pause()
    for _ in range(100):  # the doctor's verdict lands in the status bar; wait for it
        if not any(w.group == "mtp-doctor" and not w.is_finished for w in pilot.app.workers):
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
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen_snapshot(
    snap_compare: Any, tmp_path: Path, screen: str, theme: str, size: tuple[int, int]
) -> None:
    app = snapshot_app(theme, tmp_path / "state")
    assert snap_compare(app, terminal_size=size, run_before=_keys(*SCREENS[screen]))
