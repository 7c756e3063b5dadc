"""The Server screen: what the server is doing, its log, and the keys to drive it."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, TabPane

from backend.config import ServeProfile
from backend.supervisor import Phase
from tui.messages import ServerLogLines, ServerStatusPolled
from tui.widgets.log_view import ServerLogView
from tui.widgets.status_bar import ServerStatusBar

WIDE_LAYOUT_MIN_COLUMNS = 120


class ServerScreen(Screen[None]):
    """Profile, phase, URL, spec, KV dtype, live log; start/stop/restart/toggle keys."""

    BINDINGS = [
        Binding("s", "app.start_server", "Start", id="start_server",
                tooltip="Start vLLM with the selected profile"),
        Binding("x", "app.stop_server", "Stop", id="stop_server",
                tooltip="Stop the server and every process it started"),
        Binding("r", "app.restart_server", "Restart", id="restart_server",
                tooltip="Stop, then start with the same settings"),
        Binding("m", "app.toggle_spec", "MTP on/off", id="toggle_spec",
                tooltip="Switch speculative decoding (MTP) on or off and restart"),
        Binding("p", "app.pick_profile", "Profile", id="pick_profile",
                tooltip="Choose the serve profile to start"),
    ]  # fmt: skip

    def compose(self) -> ComposeResult:
        yield ServerStatusBar(id="status-bar")
        yield Static(id="status-reason")
        with (
            Horizontal(id="main-area"),
            TabbedContent(id="tabs", initial="tab-log"),
            TabPane("Log", id="tab-log"),
        ):
            yield ServerLogView(id="log-view")
        yield Footer()

    def on_mount(self) -> None:
        self._apply_width(self.size.width)
        self.watch(self.app, "selected_profile", self._show_profile, init=True)

    def on_resize(self) -> None:
        self._apply_width(self.size.width)

    def _apply_width(self, columns: int) -> None:
        self.set_class(columns >= WIDE_LAYOUT_MIN_COLUMNS, "-wide")

    @on(ServerStatusPolled)
    def show_status(self, message: ServerStatusPolled) -> None:
        status = message.status
        self.query_one(ServerStatusBar).status = status
        reason = self.query_one("#status-reason", Static)
        text = status.reason if status.phase == Phase.FAILED and status.reason else ""
        reason.update(f"✖ {text}" if text else "")
        reason.set_class(bool(text), "shown")

    @on(ServerLogLines)
    def show_log(self, message: ServerLogLines) -> None:
        self.query_one(ServerLogView).add_lines(message.lines, reset=message.reset)

    def _show_profile(self, selected: tuple[str, ServeProfile] | None) -> None:
        bar = self.query_one(ServerStatusBar)
        bar.profile_name, bar.profile = selected if selected else ("", None)
