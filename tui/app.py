"""The qtui App: owns the server supervisor and the long-lived watchers.

Screens render state and post intents; the App runs the work. Long-lived
workers (status poll, log tail) live here because workers die with their DOM
node, and a screen may be swapped while the server keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import Worker, WorkerState, get_current_worker

from backend.config import (
    ConfigError,
    ServeProfile,
    Settings,
    load_settings,
    resolve_profile,
    save_user_config,
)
from backend.engine import EngineError, resolve_engine
from backend.gpu import GpuSampler
from backend.metrics import MetricsScraper
from backend.mtp_doctor import Report, Verdict, diagnose_checkpoint
from backend.mtp_patch import PatchError, patch_checkpoint
from backend.serve_args import LaunchRefused
from backend.supervisor import ServerSupervisor, SupervisorError, took
from backend.telemetry_checks import scraper_for, startup_readout
from backend.vllm_log import clean_line, is_own_polling, tail_lines
from themes import QTUI_THEMES, TCSS_PATH, THEME_NAMES
from tui.messages import ServerLogLines, ServerStatusPolled, TelemetrySampled
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen, binding_rows
from tui.screens.profile_editor import ProfileEditorScreen
from tui.screens.profile_picker import ProfilePicker
from tui.screens.quantize import QuantizeScreen
from tui.screens.server import ServerScreen
from tui.widgets.chat import ChatPane

CONTROL_GROUP = "server-control"


class QtuiApp(App[int]):
    """Serve, watch and stop a vLLM server from one screen."""

    TITLE = "qtui"

    selected_profile: reactive[tuple[str, ServeProfile] | None] = reactive(None, init=False)
    """(name, profile) that `s` starts; screens watch it."""
    mtp_report: reactive[Report | None] = reactive(None, init=False)
    """The MTP doctor's verdict on the selected profile's checkpoint (None: not local)."""
    CSS_PATH = TCSS_PATH
    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave qtui (the server keeps running)"),
        Binding(
            "question_mark,f1",
            "show_keys",
            "Keys",
            id="help",
            tooltip="List every key and its id (for the keymap)",
        ),
    ]

    def __init__(
        self,
        settings: Settings,
        supervisor: ServerSupervisor,
        profile_name: str | None = None,
        poll_interval_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.supervisor = supervisor
        self.poll_interval_s = poll_interval_s
        self._stop_polling = threading.Event()
        # Themes first: the stylesheet refers to their variables.
        for theme in QTUI_THEMES:
            self.register_theme(theme)
        self.theme = settings.theme if settings.theme in self.available_themes else "qtui-dark"
        self._choose_initial_profile(profile_name)

    # -- set-up -------------------------------------------------------------
    def _choose_initial_profile(self, requested: str | None) -> None:
        status = self.supervisor.status()
        record = status.record
        if requested is None and record is not None and status.phase.is_up:
            # Re-attach: show what the running server uses.
            self.set_reactive(QtuiApp.selected_profile, (record.profile_name, record.serve_profile))
            return
        with contextlib.suppress(ConfigError):
            self.set_reactive(QtuiApp.selected_profile, resolve_profile(self.settings, requested))

    @property
    def profile_name(self) -> str | None:
        return self.selected_profile[0] if self.selected_profile else None

    @property
    def profile(self) -> ServeProfile | None:
        return self.selected_profile[1] if self.selected_profile else None

    def get_default_screen(self) -> Screen[None]:
        return ServerScreen()

    def on_mount(self) -> None:
        if self.settings.keymap:
            self.set_keymap(self.settings.keymap)
        self.poll_status()
        self.tail_log()
        self.sample_telemetry()
        self.check_mtp()

    def on_unmount(self) -> None:
        self._stop_polling.set()

    def watch_theme(self, theme: str) -> None:
        if theme in THEME_NAMES and theme != self.settings.theme:
            self.settings.theme = theme
            with contextlib.suppress(OSError):
                save_user_config(self.settings)

    @property
    def server_screen(self) -> ServerScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, ServerScreen):
                return screen
        return None

    # -- long-lived watchers -----------------------------------------------
    def _pause(self, worker: Worker[None], seconds: float) -> None:
        """Sleep in short slices so a cancelled watcher ends at once (quit, tests)."""
        deadline = time.monotonic() + seconds
        while not worker.is_cancelled and not self._stop_polling.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop_polling.wait(min(left, 0.1))

    @work(thread=True, group="watch-status", exit_on_error=False, description="watch the server")
    def poll_status(self) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled and not self._stop_polling.is_set():
            status = self.supervisor.status()
            screen = self.server_screen
            if screen is not None:
                screen.post_message(ServerStatusPolled(status))
            self._pause(worker, self.poll_interval_s)

    @work(thread=True, group="watch-telemetry", exit_on_error=False,
          description="GPU and /metrics")  # fmt: skip
    def sample_telemetry(self) -> None:
        """1 Hz: NVML/psutil sample and a /metrics scrape of the server we run."""
        worker = get_current_worker()
        sampler = GpuSampler()
        scraper: MetricsScraper | None = None
        following: tuple[int, str] | None = None
        while not worker.is_cancelled and not self._stop_polling.is_set():
            record = self.supervisor.load_record()
            running = record is not None and record.intent == "run"
            key = (record.pid, record.url) if record is not None and running else None
            if key != following:
                following = key
                sampler.watch(record.pgid if record is not None and running else None)
                scraper = scraper_for(record) if record is not None and running else None
            snapshot = scraper.scrape() if scraper is not None else None
            screen = self.server_screen
            if screen is not None:
                screen.post_message(TelemetrySampled(snapshot, sampler.sample()))
            self._pause(worker, self.poll_interval_s)

    @work(thread=True, group="watch-log", exit_on_error=False, description="tail the server log")
    def tail_log(self) -> None:
        worker = get_current_worker()
        current: Path | None = None
        offset = 0
        pending = b""
        while not worker.is_cancelled and not self._stop_polling.is_set():
            record = self.supervisor.load_record()
            path = Path(record.log_path) if record else None
            lines: list[str] = []
            reset = False
            readout = None
            if path != current and path is not None and path.exists():
                current, reset = path, True
                lines = [line for line in tail_lines(path, 20000) if not is_own_polling(line)]
                lines = lines[-3000:]
                offset, pending = path.stat().st_size, b""
                readout = startup_readout(path)
            elif current is not None:
                with contextlib.suppress(OSError), open(current, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read(1 << 20)
                    offset += len(chunk)
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    decoded = (clean_line(raw.decode("utf-8", "replace")) for raw in complete)
                    lines = [line for line in decoded if not is_own_polling(line)]
            screen = self.server_screen
            if (lines or reset) and screen is not None:
                screen.post_message(ServerLogLines(lines, reset=reset, readout=readout))
            self._pause(worker, 0.3)

    # -- actions --------------------------------------------------------------
    def action_show_keys(self) -> None:
        sources = [("everywhere", self.BINDINGS)]
        screen = self.server_screen
        if screen is not None:
            sources.append(("server", type(screen).BINDINGS))
        sources.append(("chat", ChatPane.BINDINGS))
        sources.append(("profile editor", ProfileEditorScreen.BINDINGS))
        sources.append(("quantize", QuantizeScreen.BINDINGS))
        from tui.screens.bench import BenchScreen

        sources.append(("bench", BenchScreen.BINDINGS))
        self.push_screen(HelpScreen(binding_rows(sources, self.settings.keymap)))

    def _require_profile(self) -> tuple[str, ServeProfile] | None:
        if self.profile_name is None or self.profile is None:
            self.notify(
                "No serve profile: press p to pick one, or run `qtui init`",
                severity="error",
            )
            return None
        return self.profile_name, self.profile

    # -- the MTP doctor, before anything starts with MTP -------------------------
    def watch_selected_profile(self) -> None:
        self.check_mtp()

    @work(exclusive=True, group="mtp-doctor", exit_on_error=False, description="MTP doctor")
    async def check_mtp(self) -> None:
        selected = self.selected_profile
        report = None
        if selected is not None and Path(selected[1].model).expanduser().is_dir():
            model = Path(selected[1].model).expanduser()
            report = await asyncio.to_thread(diagnose_checkpoint, model)
        self.mtp_report = report

    def _with_mtp_checked(self, profile: ServeProfile, proceed: Callable[[], None]) -> None:
        """Run `proceed` if `profile` can run MTP; offer the patch when it is fixable."""
        model = Path(profile.model).expanduser()
        if profile.speculative.method != "mtp" or not model.is_dir():
            proceed()
            return
        report = diagnose_checkpoint(model)
        self.mtp_report = report
        if report.verdict == Verdict.READY:
            proceed()
        elif report.verdict == Verdict.IMPOSSIBLE:
            self.notify(f"MTP unavailable: {report.reason}", severity="error", timeout=12)
        else:

            def answered(patch: bool | None) -> None:
                if patch:
                    self._patch_then(model, proceed)

            question = (
                f"MTP would not work: {report.reason}.\n\nPatch {model.name} now? "
                "Every changed file is backed up first."
            )
            self.push_screen(ConfirmScreen(question, yes="Patch"), answered)

    @work(group=CONTROL_GROUP, exit_on_error=False, description="MTP patch")
    async def _patch_then(self, model: Path, proceed: Callable[[], None]) -> str:
        result = await asyncio.to_thread(patch_checkpoint, model)
        self.check_mtp()
        proceed()
        backup = f"; backup in {result.backup_dir}" if result.backup_dir else ""
        return f"Patched {model.name}: {'; '.join(result.actions) or 'nothing to change'}{backup}"

    def action_start_server(self) -> None:
        chosen = self._require_profile()
        if chosen is not None:

            def start() -> None:
                self.notify(f"Starting {chosen[0]}…")
                self._run_control("start", chosen)

            self._with_mtp_checked(chosen[1], start)

    def action_stop_server(self) -> None:
        status = self.supervisor.status()
        record = status.record
        if not status.phase.is_up or record is None:
            self._stop_server(True)
            return
        # One stray `x` (typed after Esc left the chat input) must not drop a model
        # that takes minutes to load: a running server is stopped after a yes.
        question = (
            f"Stop {record.profile_name} at {record.url} (pid {record.pid})? "
            "Requests in flight are aborted; starting again reloads the model."
        )
        self.push_screen(ConfirmScreen(question, yes="Stop", no="Keep it"), self._stop_server)

    def _stop_server(self, confirmed: bool | None) -> None:
        if not confirmed:
            return
        self.notify("Stopping the server…")
        self._run_control("stop", None)

    def action_restart_server(self) -> None:
        record = self.supervisor.load_record()
        chosen = (record.profile_name, record.serve_profile) if record else self._require_profile()
        if chosen is not None:
            self.notify(f"Restarting {chosen[0]}…")
            self._run_control("restart", chosen)

    def action_toggle_spec(self) -> None:
        status = self.supervisor.status()
        if status.phase.is_up and status.record is not None:
            profile = status.record.serve_profile
            toggled = profile.model_copy(update={"speculative": profile.speculative.toggled()})
            name = status.record.profile_name

            def restart() -> None:
                self.selected_profile = (name, toggled)
                self.notify(f"Speculative decoding → {toggled.speculative.method}; restarting…")
                self._run_control("restart", (name, toggled))

            self._with_mtp_checked(toggled, restart)
            return
        chosen = self._require_profile()
        if chosen is None:
            return
        name, profile = chosen
        toggled = profile.model_copy(update={"speculative": profile.speculative.toggled()})

        def remember() -> None:
            self.selected_profile = (name, toggled)
            self._remember_profile(name, toggled)
            self.notify(f"Speculative decoding {toggled.speculative.method} for the next start (s)")

        self._with_mtp_checked(toggled, remember)

    def _remember_profile(self, name: str, profile: ServeProfile) -> None:
        """Keep a user profile's change in the config file (built-ins stay as shipped)."""
        if name in self.settings.profiles:
            self.settings.profiles[name] = profile
            with contextlib.suppress(OSError):
                save_user_config(self.settings)

    def action_edit_profile(self) -> None:
        if self._require_profile() is None or self.profile_name is None:
            return
        if not any(isinstance(screen, ProfileEditorScreen) for screen in self.screen_stack):
            self.push_screen(ProfileEditorScreen(self.profile_name))

    def action_quantize(self) -> None:
        # One quantize screen at most: each watches the job and would finish() it.
        for screen in self.screen_stack:
            if isinstance(screen, QuantizeScreen):
                return
        self.push_screen(QuantizeScreen())

    def action_bench(self) -> None:
        from tui.screens.bench import BenchScreen  # imported when first opened

        if not any(isinstance(screen, BenchScreen) for screen in self.screen_stack):
            self.push_screen(
                BenchScreen(self.supervisor, ready_timeout_s=self.settings.ready_timeout_s)
            )

    def action_pick_profile(self) -> None:
        def chosen(name: str | None) -> None:
            if name:
                self.use_profile(name)

        self.push_screen(ProfilePicker(self.settings.all_profiles(), self.profile_name), chosen)

    def use_profile(self, name: str) -> None:
        self.selected_profile = (name, self.settings.all_profiles()[name])
        self.notify(f"Profile {name} selected: s starts it")

    @work(thread=True, group=CONTROL_GROUP, exit_on_error=False, description="server control")
    def _run_control(self, action: str, chosen: tuple[str, ServeProfile] | None) -> str:
        timeout = self.settings.ready_timeout_s
        if action == "stop":
            report = self.supervisor.stop()
            return f"Stopped ({', '.join(report.steps) or 'nothing was running'})"
        assert chosen is not None
        name, profile = chosen
        if action == "restart":
            status = self.supervisor.restart(name, profile, timeout_s=timeout)
        else:
            status = self.supervisor.start(name, profile, timeout_s=timeout)
        record = status.record
        url = record.url if record else ""
        return f"{name} ready at {url} (spec {profile.speculative.method}){took(record)}"

    @on(Worker.StateChanged)
    def report_control_result(self, event: Worker.StateChanged) -> None:
        """One router turns every control worker's outcome into a notification."""
        worker = event.worker
        if worker.group != CONTROL_GROUP:
            return
        if event.state == WorkerState.SUCCESS and isinstance(worker.result, str):
            self.notify(worker.result)
        elif event.state == WorkerState.ERROR:
            error = worker.error
            known = (SupervisorError, LaunchRefused, EngineError, ConfigError, PatchError)
            message = str(error) if isinstance(error, known) else f"{type(error).__name__}: {error}"
            self.notify(message, severity="error", timeout=12)

    # -- palette -----------------------------------------------------------------
    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand(
            "Start server", "Start vLLM with the selected profile", self.action_start_server
        )
        yield SystemCommand(
            "Stop server", "Stop the server and its processes", self.action_stop_server
        )
        yield SystemCommand("Restart server", "Stop, then start", self.action_restart_server)
        yield SystemCommand(
            "Bench: spec decoding off vs on",
            "Decode tok/s on the model card's four prompts, A/B (restarts the server twice)",
            self.action_bench,
        )
        yield SystemCommand(
            "Toggle MTP / speculative decoding",
            "Switch speculative decoding on or off (restarts a running server)",
            self.action_toggle_spec,
        )
        yield SystemCommand(
            "Edit serve profile", "Every setting, command preview, apply", self.action_edit_profile
        )
        yield SystemCommand(
            "Quantize a model (AutoRound)", "W4A16, then the MTP doctor", self.action_quantize
        )
        yield SystemCommand(
            "Pick serve profile", "Choose the profile to start", self.action_pick_profile
        )
        for name in self.settings.all_profiles():
            yield SystemCommand(
                f"Use profile: {name}",
                "Select this profile",
                partial(self.use_profile, name),
            )


def make_app(
    profile: str | None = None,
    settings: Settings | None = None,
    supervisor: ServerSupervisor | None = None,
    poll_interval_s: float = 1.0,
) -> QtuiApp:
    """The one factory the CLI and the tests use to build the panel."""
    settings = settings or load_settings()
    if supervisor is None:
        try:
            engine = resolve_engine(settings.vllm)
        except EngineError:
            engine = None  # the panel still opens; starting says how to fix it
        supervisor = ServerSupervisor(engine)
    return QtuiApp(settings, supervisor, profile_name=profile, poll_interval_s=poll_interval_s)
