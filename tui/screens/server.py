"""The Server screen: what the server is doing, its log, and the keys to drive it."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Input, Static

from backend.endpoint import NOT_OURS
from backend.server_state import Phase, ServerStatus
from tui.messages import ServerLogLines
from tui.widgets.key_bar import KeyBar
from tui.widgets.log_view import LogDoctor, ServerLogView
from tui.widgets.status_bar import ServerStatusBar
from tui.widgets.tab_strip import TabStrip

if TYPE_CHECKING:
    from backend.config import ServeProfile
    from backend.endpoint import Endpoint
    from backend.gpu import GpuSample
    from backend.metrics import TelemetrySnapshot
    from backend.mtp_doctor import Report
    from backend.telemetry_checks import StartupReadout
    from tui.app import QtuiApp
    from tui.widgets.chat import ChatPane
    from tui.widgets.telemetry import TelemetryPanel

WIDE_LAYOUT_MIN_COLUMNS = 120
TABS = [("tab-log", "Log"), ("tab-chat", "Chat"), ("tab-telemetry", "Telemetry")]


def _gib(value: float) -> str:
    # vLLM prints sizes rounded to 0.01 GiB: a tiny model reads 0.00.
    return "<0.01 GiB" if value < 0.005 else f"{value:.2f} GiB"


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def format_readout(readout: StartupReadout) -> str:
    parts = []
    if readout.model_load_gib is not None:
        took = f" in {_seconds(readout.model_load_s)}" if readout.model_load_s is not None else ""
        parts.append(f"model {_gib(readout.model_load_gib)}{took}")
    if readout.kv_cache_gib is not None:
        parts.append(f"KV {_gib(readout.kv_cache_gib)}")
    if readout.kv_cache_tokens is not None:
        parts.append(f"{readout.kv_cache_tokens:,} tok")
    if readout.max_concurrency is not None:
        per = f" @{readout.tokens_per_request:,}" if readout.tokens_per_request else ""
        fits = readout.max_concurrency
        parts.append(f"{fits:,.0f}x{per}" if fits >= 10 else f"{fits:.1f}x{per}")
    return "loaded: " + " · ".join(parts) if parts else ""


class ServerScreen(Screen[None]):
    """Profile, phase, URL, spec, KV dtype, live log; start/stop/restart/toggle keys."""

    AUTO_FOCUS = "#log-view"

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
        Binding("e", "app.edit_profile", "Edit", id="edit_profile",
                tooltip="Edit the selected serve profile (preview, diff, apply)"),
        Binding("a", "app.quantize", "Quantize", id="quantize", show=False,
                tooltip="Quantize a model with AutoRound (W4A16) and fix its MTP head"),
        Binding("b", "app.bench", "Bench", id="bench", show=False,
                tooltip="Decode tok/s with spec decoding off vs on (the model card's table)"),
        Binding("w", "app.switch_endpoint", "Server", id="switch_endpoint", show=False,
                tooltip="Watch another vLLM server ([endpoints] in the config, or --url)"),
        Binding("v", "app.verify", "Verify", id="verify", show=False,
                tooltip="Probe the running server: health, models, chat, parsers, spec, KV cache"),
        Binding("l", "show_tab('tab-log')", "Log", id="show_log",
                tooltip="Show the server log", show=False),
        # priority: handled as the key arrives, so what is typed right after it
        # already finds the chat input focused (see check_action).
        Binding("c", "show_tab('tab-chat')", "Chat", id="show_chat", priority=True,
                tooltip="Chat with the running server (Esc leaves the input)"),
        Binding("t", "show_tab('tab-telemetry')", "Telemetry", id="show_telemetry", show=False,
                tooltip="GPU memory, tok/s, acceptance (beside the log on wide terminals)"),
        Binding("slash", "search_log", "Find", id="search_log", show=False,
                tooltip="Search the server log (Enter: next match, Esc: close)"),
        Binding("o", "open_log_in_pager", "Pager", id="open_log_in_pager", show=False,
                tooltip="Open the whole server log in $PAGER"),
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self._readout: StartupReadout | None = None
        """What loading reported; None until the log has been read."""
        self._reason_shown = ""
        self._fit_note = ""
        """`qtui fit`'s prediction against the KV cache vLLM reported (empty until known)."""
        self._telemetry: tuple[TelemetrySnapshot | None, GpuSample | None] | None = None
        self._speed_key: tuple[str, str, str] | None = None
        """Which server's speed comparison is shown (re-read when another runs)."""

    def compose(self) -> ComposeResult:
        # The first frame holds what says where things stand (the bar, the log) and
        # the keys; the telemetry columns, the log search and the chat are mounted
        # after it (see _mount_the_rest and _ensure_chat).
        yield ServerStatusBar(id="status-bar")
        yield Static(id="status-reason")
        yield TabStrip(TABS, active="tab-log", id="tab-strip")
        with Horizontal(id="main-area"), ContentSwitcher(id="tabs", initial="tab-log"):
            with Vertical(id="tab-log"):
                yield LogDoctor(id="log-doctor")
                yield Static(id="startup-readout")
                yield ServerLogView(id="log-view")
            yield Vertical(id="tab-chat")
            yield Vertical(id="tab-telemetry")
        yield KeyBar()

    def on_mount(self) -> None:
        self._apply_width(self.size.width)
        self.watch(self.app, "selected_profile", self._show_profile, init=True)
        self.watch(self.app, "mtp_report", self._show_mtp_report, init=True)
        self.watch(self.app, "endpoint", self._show_endpoint, init=True)
        self.watch(self.app, "served", self._show_served, init=True)
        self.watch(self.app, "server_status", self.show_status, init=True)
        if self._qtui_app().endpoint is None:
            self.query_one(ServerLogView).add_lines(
                [
                    "# qtui: no server log yet. s starts the profile above, "
                    "p picks another, e edits it."
                ]
            )
        self.call_after_refresh(self._mount_the_rest)

    async def _mount_the_rest(self) -> None:
        """After the first frame: the telemetry (in its tab, and beside the log on a
        wide terminal), then the live figures start flowing into it."""
        from tui.widgets.telemetry import TelemetryPanel

        await self.query_one("#tab-telemetry", Vertical).mount(
            TelemetryPanel(id="tab-telemetry-panel")
        )
        await self.query_one("#main-area", Horizontal).mount(TelemetryPanel(id="side-telemetry"))
        self.watch(self.app, "telemetry", self.show_telemetry, init=True)
        status = self._qtui_app().server_status
        if status is not None:
            self._speed_key = None  # the new panels have not been told yet
            self._show_speed_of(status)

    def _telemetry_panels(self) -> list[TelemetryPanel]:
        # Queried by name: importing the class would bring psutil and the GPU code
        # into the first frame. None before _mount_the_rest.
        return cast("list[TelemetryPanel]", list(self.query("TelemetryPanel")))

    @property
    def chat(self) -> ChatPane | None:
        """The chat, once its tab has been opened (looked up by id: importing the
        ChatPane class to query by type would cost the first frame a fifth of a second)."""
        found = self.query("#chat")
        return cast("ChatPane", found.first()) if found else None

    async def _ensure_chat(self) -> ChatPane:
        from tui.widgets.chat import ChatPane

        pane = self.chat
        if pane is None:
            endpoint = self._qtui_app().endpoint
            pane = ChatPane(
                endpoint.url if endpoint else None,
                api_key_env=endpoint.api_key_env if endpoint else None,
                focus_on_mount=False,
                id="chat",
            )
            await self.query_one("#tab-chat", Vertical).mount(pane)
        return pane

    def on_resize(self) -> None:
        self._apply_width(self.size.width)
        self.call_after_refresh(self._catch_up_telemetry)

    @on(TabStrip.Chosen)
    async def _tab_clicked(self, event: TabStrip.Chosen) -> None:
        await self.action_show_tab(event.tab)

    def _focus_tab(self, tab: str | None) -> None:
        # set_focus now, not widget.focus() (which waits a turn): keys typed right
        # after `c` must reach the chat input, not the screen's letter bindings
        # (`e` would open the editor, `x` stop the server).
        if tab == "tab-chat":
            self.set_focus(self.query_one("#chat-input", Input))
        elif tab == "tab-log":
            self.set_focus(self.query_one(ServerLogView))

    def _apply_width(self, columns: int) -> None:
        wide = columns >= WIDE_LAYOUT_MIN_COLUMNS
        self.set_class(wide, "-wide")
        strip = self.query_one(TabStrip)
        # On a wide terminal the telemetry sits beside the log: no tab for it.
        strip.hidden = frozenset({"tab-telemetry"}) if wide else frozenset()
        if wide and strip.active == "tab-telemetry":
            self._switch_to("tab-log")

    def _switch_to(self, tab: str) -> None:
        self.query_one(TabStrip).active = tab
        self.query_one("#tabs", ContentSwitcher).current = tab
        self.call_after_refresh(self._catch_up_telemetry)

    def show_telemetry(
        self, sampled: tuple[TelemetrySnapshot | None, GpuSample | None] | None
    ) -> None:
        if sampled is None:
            return
        self._telemetry = sampled
        # Only what is on screen: the Telemetry tab behind the Log, or the side
        # column on a narrow terminal, catches up when it is shown.
        for panel in self._telemetry_panels():
            if panel.is_on_screen:
                panel.update_snapshot(*sampled)
            else:
                panel.behind = True

    def _catch_up_telemetry(self) -> None:
        for panel in self._telemetry_panels():
            if panel.behind and panel.is_on_screen and self._telemetry is not None:
                panel.behind = False
                panel.update_snapshot(*self._telemetry)

    def on_chat_pane_reply_finished(self, message: ChatPane.ReplyFinished) -> None:
        if message.speed is not None:
            for panel in self._telemetry_panels():
                panel.update_speed(message.speed)

    def _show_speed_of(self, status: ServerStatus) -> None:
        """The ledger's comparison for the server now running (read when that changes)."""
        record = status.record if status.phase.is_up else None
        if record is None:
            if self._speed_key is None:
                return
            key, speed = None, None
        else:
            from backend.speed_ledger import SpeedLedger, spec_label

            key = (record.profile_name, record.url, spec_label(record))
            if key == self._speed_key:
                return
            speed = SpeedLedger().comparison(record)
        self._speed_key = key
        for panel in self._telemetry_panels():
            panel.update_speed(speed)

    def show_status(self, status: ServerStatus | None) -> None:
        if status is None:
            return
        self._show_speed_of(status)
        bar = self.query_one(ServerStatusBar)
        bar.booting = False
        bar.status = status
        if status.phase == Phase.READY:
            self.query_one(LogDoctor).server_ready()
        reason = self.query_one("#status-reason", Static)
        stuck = status.phase in (Phase.FAILED, Phase.NOT_RESPONDING)
        text = status.reason if stuck and status.reason else ""
        pinned = self.query_one(LogDoctor).diagnosis
        if pinned is not None and pinned.advice == text:
            text = ""  # the log doctor already shows this line above the log
        shown = f"✖ {text}" if text else ""
        if shown != self._reason_shown:
            # Updating a Static relayouts the screen: only when the words change.
            self._reason_shown = shown
            reason.update(shown)
            reason.set_class(bool(text), "shown")

    @on(ServerLogLines)
    def show_log(self, message: ServerLogLines) -> None:
        message.stop()  # handled here; the App's copy of the stream comes from its worker
        log_view = self.query_one(ServerLogView)
        log_view.add_lines(message.lines, reset=message.reset)
        self._update_readout(message.lines, message.reset, message.readout)
        self.query_one(LogDoctor).examine(message.lines, reset=message.reset)

    def _update_readout(
        self, lines: list[str], reset: bool, initial: StartupReadout | None
    ) -> None:
        """What loading reported (weights, KV cache, concurrency), from new lines only."""
        from backend.telemetry_checks import StartupReadout, parse_startup

        if reset or self._readout is None:
            self._readout = initial or StartupReadout()
        found = parse_startup(lines)
        merged = {k: v for k, v in asdict(found).items() if v is not None}
        if not merged and not reset:
            return
        self._readout = replace(self._readout, **merged)
        if reset:
            self._fit_note = ""
        self._show_readout()
        if self._readout.kv_cache_tokens is not None and not self._fit_note:
            self._check_prediction(self._readout)

    def _show_readout(self) -> None:
        if self._readout is None:
            return
        widget = self.query_one("#startup-readout", Static)
        text = format_readout(self._readout)
        widget.update(f"{text}\n{self._fit_note}" if text and self._fit_note else text)
        widget.set_class(not self._readout.empty, "shown")

    @work(thread=True, exclusive=True, group="fit-check", exit_on_error=False,
          description="qtui fit's prediction against what vLLM allocated")  # fmt: skip
    def _check_prediction(self, readout: StartupReadout) -> None:
        """The KV cache vLLM reports, next to what `qtui fit` predicted for the profile
        (the checkpoint is read in this thread, once per server)."""
        from backend.fit import check_record_fit

        app = self._qtui_app()
        if app.endpoint is not None or not app.booted:
            return
        record = app.supervisor.load_record()
        note = check_record_fit(record, readout) if record is not None else None
        if note:
            self.app.call_from_thread(self._set_fit_note, f"fit: {note}")

    def _set_fit_note(self, note: str) -> None:
        self._fit_note = note
        self._show_readout()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A priority key must still type into an input (the chat's, the log search).
        return not (action == "show_tab" and isinstance(self.focused, Input))

    async def action_show_tab(self, tab: str) -> None:
        if tab in self.query_one(TabStrip).hidden:
            tab = "tab-log"  # `t` on a wide terminal: the telemetry is already in view
        if tab == "tab-chat":
            await self._ensure_chat()
        self._switch_to(tab)
        self._focus_tab(tab)

    async def action_search_log(self) -> None:
        self._switch_to("tab-log")
        found = self.query("#log-search")
        if found:
            search = found.first(Input)
        else:  # the first `/`: the field is made when it is wanted
            search = Input(placeholder="find in log…", id="log-search")
            await self.query_one("#tab-log", Vertical).mount(search, before="#log-view")
        search.add_class("shown")
        self.set_focus(search)

    @on(Input.Submitted, "#log-search")
    def find_in_log(self, event: Input.Submitted) -> None:
        found = self.query_one(ServerLogView).find_next(event.value)
        if found is None:
            self.notify(f"{event.value!r} is not in the log", severity="warning")
        else:
            self.notify(f"match {found[0]} of {found[1]}", timeout=2)

    def key_escape(self) -> None:
        """Esc closes the log search, or leaves the chat input so letter keys work again."""
        focused = self.focused
        chat = self.chat
        if focused is not None and chat is not None and chat in focused.ancestors_with_self:
            self.query_one(TabStrip).focus()
            return
        found = self.query("#log-search")
        if found and found.first().has_class("shown"):
            search = found.first()
            search.remove_class("shown")
            log_view = self.query_one(ServerLogView)
            log_view.auto_scroll = True
            log_view.scroll_end(animate=False)
            log_view.focus()

    def action_open_log_in_pager(self) -> None:
        app = self._qtui_app()
        if not app.booted:
            return
        record = app.supervisor.load_record()
        if record is None:
            self.notify("No server log yet", severity="warning")
            return
        pager = shlex.split(os.environ.get("PAGER") or "less -R")
        with self.app.suspend():
            subprocess.call([*pager, record.log_path])

    def _show_mtp_report(self, report: Report | None) -> None:
        bar = self.query_one(ServerStatusBar)
        profile = bar.profile
        uses_mtp = profile is not None and "mtp" in (
            profile.speculative.method,
            profile.speculative.toggle_method,
        )
        if report is None or not uses_mtp:
            bar.mtp_note = ""
            return
        from backend.mtp_doctor import Verdict

        if report.verdict == Verdict.READY:
            bar.mtp_note = ""
        elif report.verdict == Verdict.FIXABLE:
            bar.mtp_note = "MTP needs a patch (m offers it)"
        else:
            bar.mtp_note = f"MTP unavailable: {report.reason}"

    def _show_endpoint(self, endpoint: Endpoint | None) -> None:
        """Another server is shown (or qtui's own again): the bar, the chat, the log say so."""
        bar = self.query_one(ServerStatusBar)
        bar.endpoint = endpoint
        bar.status = None
        chat = self.chat
        if chat is not None:
            chat.base_url = endpoint.url if endpoint else None
            chat.api_key_env = endpoint.api_key_env if endpoint else None
        if endpoint is not None:
            self.query_one(ServerLogView).add_lines(
                [f"# qtui: watching {endpoint.url}, {NOT_OURS}: its log is not ours to read"],
                reset=True,
            )
            self.query_one(LogDoctor).examine([], reset=True)

    def _show_served(self, served: str) -> None:
        self.query_one(ServerStatusBar).served = served

    def _show_profile(self, selected: tuple[str, ServeProfile] | None) -> None:
        bar = self.query_one(ServerStatusBar)
        bar.profile_name, bar.profile = selected if selected else ("", None)
        self._show_mtp_report(self._qtui_app().mtp_report)

    def _qtui_app(self) -> QtuiApp:
        from tui.app import QtuiApp

        app = self.app
        assert isinstance(app, QtuiApp), "the Server screen belongs to QtuiApp"
        return app
