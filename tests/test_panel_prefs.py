"""Themes, keymap, NO_COLOR and the browser view: the panel as a user sets it up."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from textual.content import Content
from textual.widgets import Static

from backend import paths
from backend.config import ServeProfile, Settings, SpeculativeSettings
from backend.supervisor import ServerSupervisor
from tests.conftest import free_port
from themes import QTUI_THEMES, THEME_NAMES
from tui.app import QtuiApp, make_app
from tui.screens.help import HelpScreen


def panel(tmp_path: Path, **settings: object) -> QtuiApp:
    profile = ServeProfile(
        model="/models/x", speculative=SpeculativeSettings(toggle_method="ngram")
    )
    config = Settings(profiles={"p": profile}, default_profile="p", **settings)  # type: ignore[arg-type]
    return make_app(
        settings=config, supervisor=ServerSupervisor(None, state_dir=tmp_path), poll_interval_s=5
    )


def test_four_themes_with_state_variables() -> None:
    assert len(QTUI_THEMES) >= 4
    assert {"qtui-dark", "qtui-light", "qtui-high-contrast", "qtui-256"} <= set(THEME_NAMES)
    for theme in QTUI_THEMES:
        assert {"server-up", "server-down", "server-busy", "gpu-hot"} <= set(theme.variables)


def test_tcss_uses_variables_only() -> None:
    tcss = (Path(__file__).parent.parent / "themes" / "qtui.tcss").read_text()
    values = re.findall(r":\s*([^;{}]+);", tcss)
    assert len(values) > 20, "the stylesheet's declarations were found"
    assert [v for v in values if re.search(r"#[0-9a-fA-F]{3,8}\b|rgb\(", v)] == []
    assert any("$" in v for v in values)


async def test_theme_choice_is_saved_to_the_config(tmp_path: Path) -> None:
    app = panel(tmp_path, theme="qtui-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        app.theme = "qtui-high-contrast"
        await pilot.pause()
    saved = tomllib.loads(paths.config_file().read_text())
    assert saved["theme"] == "qtui-high-contrast"
    again = panel(tmp_path, theme=saved["theme"])
    async with again.run_test(size=(80, 24)):
        assert again.theme == "qtui-high-contrast"


async def test_keymap_remaps_the_mtp_toggle(tmp_path: Path) -> None:
    app = panel(tmp_path, keymap={"toggle_spec": "ctrl+t"})
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("m")
        await pilot.pause()
        assert app.profile is not None and app.profile.speculative.method == "off"
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert app.profile.speculative.method == "ngram"
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        keys = {row[3]: row[1] for row in app.screen.rows}
        assert keys["toggle_spec"] == "ctrl+t"
        # At 80 columns every row is shown whole, wrapped, under its place's heading.
        shown = app.screen.query_one("#help-keys", Static).render()
        assert isinstance(shown, Content)
        lines = shown.plain.replace("\N{NO-BREAK SPACE}", " ").splitlines()
        row = next(i for i, line in enumerate(lines) if line.strip().startswith("ctrl+t "))
        # Continuation lines are indented under the words, not under the keys.
        end = next(i for i in range(row + 1, len(lines)) if not lines[i].startswith(" " * 15))
        words = " ".join(" ".join(line.split()) for line in lines[row:end])
        assert words == (
            "ctrl+t Switch speculative decoding (MTP) on or off and restart · toggle_spec"
        )
        assert all(len(line) <= 80 for line in lines)
        assert "server" in lines[:row]


async def test_every_binding_has_an_id_and_a_tooltip(tmp_path: Path) -> None:
    app = panel(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        ids = {row[3] for row in app.screen.rows}
        assert {"start_server", "stop_server", "restart_server", "toggle_spec"} <= ids
        assert all(row[2] for row in app.screen.rows), "every key says what it does"


async def test_no_color_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = panel(tmp_path)
    async with app.run_test(size=(80, 24)):
        assert app.no_color


def test_serve_web_binds_loopback_and_serves_the_panel(tmp_path: Path) -> None:
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "tui", "--serve-web", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        page = None
        while time.monotonic() < deadline:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert page is not None and page.status_code == 200 and "textual" in page.text.lower()
        listening = [
            c.laddr.ip
            for c in __import__("psutil").net_connections("tcp")
            if c.laddr and c.laddr.port == port and c.status == "LISTEN"
        ]
        assert listening and all(ip == "127.0.0.1" for ip in listening)
        with socket.socket() as probe:  # not reachable on another local address
            assert probe.connect_ex(("127.0.0.2", port)) != 0
    finally:
        web.terminate()
        web.wait(timeout=10)
