"""The qtui App: owns the server supervisor and the long-lived watchers.

Screens render state and post intents; the App runs the work. Long-lived
workers (status poll, log tail) live here because workers die with their DOM
node, and a screen may be swapped while the server keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Input
from textual.worker import Worker, WorkerState, get_current_worker

from backend import paths
from backend.server_state import Phase, ServerStatus, took
from themes import QTUI_THEMES, TCSS_PATH, THEME_NAMES
from tui.messages import ServerLogLines, ServerStatusPolled, TelemetrySampled
from tui.screens.server import ServerScreen

if TYPE_CHECKING:
    from backend.config import ServeProfile, Settings
    from backend.endpoint import Endpoint
    from backend.gpu import GpuSample
    from backend.metrics import MetricsScraper, TelemetrySnapshot
    from backend.mtp_doctor import Report
    from backend.server_state import ServerRecord
    from backend.supervisor import ServerSupervisor

CONTROL_GROUP = "server-control"
STEADY_AFTER = 3
"""Polls with nothing moving before the watcher slows down."""
STEADY_PACE = 3.0
"""How many times slower than `poll_interval_s` a steady server is polled."""
STEADY_SAMPLE_EVERY = 3
"""A steady server's /metrics and GPUs are read on every this many polls (/health on each)."""
LOG_BUSY_PACE_S = 0.3
LOG_QUIET_PACE_S = 3.0
LOG_QUIET_AFTER_S = 5.0
LOG_FIRST_LINES = 20000
"""Lines read back when a log is first seen (our own /health polls are then dropped)."""
LOG_LINES_SHOWN = 3000


class PollPace:
    """The watcher's pace: quick while anything moves, slower once it has sat still.

    "Moving" is a new phase or server, or requests running or waiting on it. A
    user's action (`QtuiApp.poll_soon`) wakes the watcher at once either way.
    """

    def __init__(self) -> None:
        self._last: object = None
        self._still = 0

    def observe(self, state: object, busy: bool) -> None:
        self._still = 0 if busy or state != self._last else self._still + 1
        self._last = state

    def wake(self) -> None:
        """Something happened (a user's action, new lines in the server's log)."""
        self._still = 0

    @property
    def steady(self) -> bool:
        return self._still >= STEADY_AFTER

    @property
    def sample_due(self) -> bool:
        """Scrape /metrics and read the GPUs on this poll? Every poll while anything
        moves; a steady server's figures do not move: every `STEADY_SAMPLE_EVERY`th."""
        return not self.steady or self._still % STEADY_SAMPLE_EVERY == 0

    def interval(self, quick_s: float) -> float:
        return quick_s * STEADY_PACE if self.steady else quick_s


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, None when missing: what tells that it changed."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _busy(snapshot: TelemetrySnapshot | None) -> bool:
    """Requests in flight on the server (so its figures move every second)."""
    return snapshot is not None and bool(snapshot.running or snapshot.waiting)


class QtuiApp(App[int]):
    """Serve, watch and stop a vLLM server from one screen.

    The first frame comes before anything slow: the config (pydantic), the engine
    probe and the first /health call run in the `boot` worker after it. One
    watcher worker polls the server and its telemetry; the App keeps the results
    as reactives (`server_status`, `telemetry`) that screens watch, so key handlers
    read the last known state instead of asking a server that may not answer.
    """

    TITLE = "qtui"

    # `var`, not `reactive`: a change on the App must not repaint every screen;
    # the screens that show these watch them.
    selected_profile: var[tuple[str, ServeProfile] | None] = var(None, init=False)
    """(name, profile) that `s` starts; screens watch it."""
    mtp_report: var[Report | None] = var(None, init=False)
    """The MTP doctor's verdict on the selected profile's checkpoint (None: not local)."""
    server_status: var[ServerStatus | None] = var(None, init=False)
    """The last poll of the server; None until the first poll has answered."""
    endpoint: var[Endpoint | None] = var(None, init=False)
    """A server qtui did not start, shown instead of its own (`--url`, `w`); None: ours."""
    served: var[str] = var("", init=False)
    """What a watched endpoint serves, from its /v1/models."""
    telemetry: var[tuple[TelemetrySnapshot | None, GpuSample | None] | None] = var(
        None, init=False, always_update=True
    )
    """The last /metrics window and GPU sample; None before the first sample."""
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
        settings: Settings | None = None,
        supervisor: ServerSupervisor | None = None,
        profile_name: str | None = None,
        poll_interval_s: float = 1.0,
        endpoint: Endpoint | None = None,
    ) -> None:
        super().__init__()
        self.set_reactive(QtuiApp.endpoint, endpoint)
        self._settings = settings
        self._supervisor = supervisor
        self._requested_profile = profile_name
        self.poll_interval_s = poll_interval_s
        self._stop_polling = threading.Event()
        self._poll_wake = threading.Event()
        self._poll_steady = False
        """The watcher has slowed down (written by its thread, read by the log tail)."""
        self._log_wake = threading.Event()
        # Themes first: the stylesheet refers to their variables.
        for theme in QTUI_THEMES:
            self.register_theme(theme)
        wanted = settings.theme if settings is not None else paths.configured_theme()
        self.theme = wanted if wanted in self.available_themes else "qtui-dark"
        if settings is not None and supervisor is not None:
            self._choose_initial_profile()

    # -- set-up -------------------------------------------------------------
    @property
    def booted(self) -> bool:
        """Config read and supervisor built (the boot worker has finished)."""
        return self._settings is not None and self._supervisor is not None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            raise RuntimeError("the config is still being read")
        return self._settings

    @property
    def supervisor(self) -> ServerSupervisor:
        if self._supervisor is None:
            raise RuntimeError("the panel is still starting")
        return self._supervisor

    def _choose_initial_profile(self) -> None:
        """Re-attach to the profile of a server that is meant to run, else the requested one.

        Reads the state file only (no /health call): a frozen server must not
        delay the panel.
        """
        from backend.config import ConfigError, resolve_profile

        record = self.supervisor.load_record()
        chosen: tuple[str, ServeProfile] | None = None
        if self._requested_profile is None and record is not None and record.intent == "run":
            chosen = (record.profile_name, record.serve_profile)
        else:
            with contextlib.suppress(ConfigError):
                chosen = resolve_profile(self.settings, self._requested_profile)
        if self.is_running:
            self.selected_profile = chosen  # after boot: the screens watch it
        else:
            self.set_reactive(QtuiApp.selected_profile, chosen)

    @property
    def profile_name(self) -> str | None:
        return self.selected_profile[0] if self.selected_profile else None

    @property
    def profile(self) -> ServeProfile | None:
        return self.selected_profile[1] if self.selected_profile else None

    def get_default_screen(self) -> Screen[None]:
        return ServerScreen()

    def on_mount(self) -> None:
        # After the first frame: a thread importing pydantic holds the GIL in long
        # stretches, and started now it would delay that frame by half a second.
        if self.booted:
            self._start_watching()
        else:
            # A short wait more: the first frame's layout settles a refresh later.
            self.call_after_refresh(self.set_timer, 0.1, self.boot)

    @work(thread=True, group="boot", exit_on_error=False, description="read the config")
    def boot(self) -> None:
        """After the first frame: the config, the engine, the supervisor."""
        from backend.config import ConfigError, load_settings
        from backend.engine import EngineError, resolve_engine
        from backend.supervisor import ServerSupervisor

        try:
            settings = self._settings or load_settings()
        except ConfigError as error:
            self.call_from_thread(self.exit, return_code=2, message=f"qtui: config: {error}")
            return
        supervisor = self._supervisor
        if supervisor is None:
            try:
                engine = resolve_engine(settings.vllm)
            except EngineError:
                engine = None  # the panel still opens; starting says how to fix it
            supervisor = ServerSupervisor(engine)
        self.call_from_thread(self._booted, settings, supervisor)

    def _booted(self, settings: Settings, supervisor: ServerSupervisor) -> None:
        self._settings, self._supervisor = settings, supervisor
        if settings.theme in self.available_themes and settings.theme != self.theme:
            self.theme = settings.theme
        self._choose_initial_profile()
        self._start_watching()

    def _start_watching(self) -> None:
        if self.settings.keymap:
            self.set_keymap(self.settings.keymap)
        self.watch_server()
        self.tail_log()
        self.check_mtp()
        self.set_timer(1.0, self._warm_up)

    @work(thread=True, group="warm-up", exit_on_error=False, description="import the screens")
    def _warm_up(self) -> None:
        """Import what the other screens need while nobody waits, so the first `?`, `c`,
        `e`, `a` or `b` opens in a frame rather than after a fifth of a second of imports."""
        import tui.screens.bench
        import tui.screens.help
        import tui.screens.profile_editor
        import tui.screens.profile_picker
        import tui.screens.quantize
        import tui.widgets.chat  # noqa: F401

        # What is alive now (modules, classes, the first screen) lives as long as the
        # panel: moved out of the collector's sight, a full collection no longer walks
        # it. Those came every few seconds while the panel polled, and one landing in
        # a key press added 30-40 ms to it. Collected first, so no garbage is kept.
        gc.collect()
        gc.freeze()

    def _not_ours(self) -> bool:
        """True (and says why) when the panel shows a server qtui did not start."""
        endpoint = self.endpoint
        if endpoint is None:
            return False
        self.notify(
            f"{endpoint.name} was not started by qtui: start, stop, restart and the MTP toggle "
            "are for the server qtui runs (w switches back to it)",
            severity="warning",
            timeout=8,
        )
        return True

    def _not_booted(self) -> bool:
        """True (and says so) when a key arrives before the config has been read."""
        if self.booted:
            return False
        self.notify("Still reading the config…", timeout=2)
        return True

    def on_unmount(self) -> None:
        self._stop_polling.set()
        self.poll_soon()  # wakes both watchers, which then see the stop

    def watch_theme(self, theme: str) -> None:
        if not self.booted or theme not in THEME_NAMES or theme == self.settings.theme:
            return
        from backend.config import save_user_config

        self.settings.theme = theme
        try:
            save_user_config(self.settings)
        except OSError as error:
            self.notify(f"Theme not saved: {error}", severity="warning")

    @property
    def server_screen(self) -> ServerScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, ServerScreen):
                return screen
        return None

    # -- long-lived watchers -----------------------------------------------
    def poll_soon(self) -> None:
        """Something was asked of the server (a start, a stop, a message sent): poll now,
        and at the quick pace until things are steady again."""
        self._poll_wake.set()
        self._log_wake.set()

    def _sleep(self, wake: threading.Event, seconds: float) -> bool:
        """One wait, woken early by `poll_soon` or by quitting (never a busy loop of slices:
        each wake-up of an idle panel costs CPU). True when woken early."""
        woken = wake.wait(seconds)
        wake.clear()
        return woken

    def _watching(self, worker: Worker[None]) -> bool:
        return not worker.is_cancelled and not self._stop_polling.is_set()

    @work(thread=True, group="watch-server", exit_on_error=False,
          description="watch the server: /health, /metrics, GPU")  # fmt: skip
    def watch_server(self) -> None:
        """The one poll: status, then (while it answers) a /metrics scrape and a GPU sample.

        A server that stopped answering is not scraped: its /health timeout is
        wait enough, and the panel shows "not responding" instead. The pace is
        `poll_interval_s` while anything moves and `STEADY_PACE`x slower once the
        server has sat still (same phase, no request running or waiting) for
        `STEADY_AFTER` polls: an idle panel then costs a third of the CPU.
        """
        from backend.endpoint import EndpointWatcher
        from backend.gpu import GpuSampler
        from backend.metrics import MetricsScraper
        from backend.telemetry_checks import scraper_for

        worker = get_current_worker()
        sampler = GpuSampler()
        scraper: MetricsScraper | None = None
        following: tuple[int, str] | None = None
        watcher: EndpointWatcher | None = None
        pace = PollPace()
        woken = True
        while self._watching(worker):
            endpoint = self.endpoint
            if endpoint is None:
                status = self.supervisor.status()
                record = status.record if status.phase.is_up else None
                key = (record.pid, record.url) if record is not None else None
            else:
                # A server qtui did not start: /health and /metrics by URL, GPU totals only.
                if watcher is None or watcher.endpoint != endpoint:
                    watcher = EndpointWatcher(endpoint)
                status = watcher.status()
                record = None
                key = (0, endpoint.url)
            served = watcher.served if watcher is not None and endpoint is not None else ""
            self.post_message(ServerStatusPolled(status, endpoint, served))
            if key != following:
                following = key
                sampler.watch(record.pgid if record is not None else None)
                if record is not None:
                    scraper = scraper_for(record)
                elif endpoint is not None:
                    scraper = MetricsScraper(endpoint.url)
                else:
                    scraper = None
            busy = False
            if pace.sample_due or woken:
                answering = status.phase is Phase.READY
                snapshot = scraper.scrape() if scraper is not None and answering else None
                self.post_message(TelemetrySampled(snapshot, sampler.sample()))
                busy = _busy(snapshot)
            pace.observe((status.phase, key), busy=busy)
            self._poll_steady = pace.steady
            woken = self._sleep(self._poll_wake, pace.interval(self.poll_interval_s))
            if woken:
                pace.wake()

    @on(Input.Submitted)
    def _something_sent(self) -> None:
        # A chat message (or any entry) may set the server to work: its tok/s and
        # acceptance should show from the first second, not after a steady pause.
        self.poll_soon()

    @on(ServerStatusPolled)
    def _keep_status(self, message: ServerStatusPolled) -> None:
        if message.endpoint != self.endpoint:
            return  # polled just before a switch (w)
        self.served = message.served
        self.server_status = message.status

    @on(TelemetrySampled)
    def _keep_telemetry(self, message: TelemetrySampled) -> None:
        self.telemetry = (message.snapshot, message.gpu)

    @work(thread=True, group="watch-log", exit_on_error=False, description="tail the server log")
    def tail_log(self) -> None:
        """Follow the log of the server qtui runs (a watched endpoint's is not ours to read)."""
        from backend.log_follow import LogFollower
        from backend.telemetry_checks import startup_readout
        from backend.vllm_log import is_own_polling

        worker = get_current_worker()
        follower: LogFollower | None = None
        record: ServerRecord | None = None
        seen: tuple[object, object] | None = None
        quiet_since = time.monotonic()
        while self._watching(worker):
            # Two stats a turn while nothing changes: the record is re-read when its file
            # changes, the log when it grows (or is replaced).
            state = _identity(self.supervisor.state_path) if self.endpoint is None else None
            if state is None or state != (seen or (None, None))[0]:
                record = self.supervisor.load_record() if state is not None else None
            log = _identity(Path(record.log_path)) if record is not None else None
            changed = (state, log) != seen or follower is None
            seen = (state, log)
            if record is None:
                follower = None  # the next server's log (or ours again) starts afresh
            elif changed:
                if follower is None:
                    follower = LogFollower(record.log_path, start_lines=LOG_FIRST_LINES)
                follower.path = Path(record.log_path)
                lines = [line for line in follower.read_new() if not is_own_polling(line)]
                if follower.started_over:
                    readout = startup_readout(follower.path)
                    self.post_message(
                        ServerLogLines(lines[-LOG_LINES_SHOWN:], reset=True, readout=readout)
                    )
                elif lines:
                    self.post_message(ServerLogLines(lines))
                if lines:
                    quiet_since = time.monotonic()
                    if self._poll_steady:
                        # Someone else's request (its access line, vLLM's throughput
                        # line): the watcher looks at once instead of at its slow pace.
                        self._poll_wake.set()
            # A log that is being written (a start, a load, a crash) is followed 3x a
            # second; one quiet for a while is looked at every 3 s (a user's action
            # wakes this at once: see poll_soon).
            quiet = time.monotonic() - quiet_since > LOG_QUIET_AFTER_S
            self._sleep(self._log_wake, LOG_QUIET_PACE_S if quiet else LOG_BUSY_PACE_S)

    @on(ServerLogLines)
    def _forward_log(self, message: ServerLogLines) -> None:
        # A call, not a re-post: a message posted to the screen would bubble
        # back up to this handler.
        screen = self.server_screen
        if screen is not None and not screen.is_mounted:
            # The log's first lines can beat the screen's first compose: hold them a turn.
            self.set_timer(0.05, partial(self._forward_log, message))
        elif screen is not None:
            screen.show_log(message)

    # -- actions --------------------------------------------------------------
    def action_show_keys(self) -> None:
        from tui.screens.bench import BenchScreen
        from tui.screens.help import HelpScreen, binding_rows
        from tui.screens.profile_editor import ProfileEditorScreen
        from tui.screens.quantize import QuantizeScreen
        from tui.widgets.chat import ChatPane

        sources = [("everywhere", self.BINDINGS)]
        screen = self.server_screen
        if screen is not None:
            sources.append(("server", type(screen).BINDINGS))
        sources.append(("chat", ChatPane.BINDINGS))
        sources.append(("profile editor", ProfileEditorScreen.BINDINGS))
        sources.append(("quantize", QuantizeScreen.BINDINGS))
        sources.append(("bench", BenchScreen.BINDINGS))
        keymap = self.settings.keymap if self.booted else {}
        self.push_screen(HelpScreen(binding_rows(sources, keymap)))

    def _require_profile(self) -> tuple[str, ServeProfile] | None:
        if self._not_booted():
            return None
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
        from backend.mtp_doctor import diagnose_checkpoint

        selected = self.selected_profile
        report = None
        if selected is not None and Path(selected[1].model).expanduser().is_dir():
            model = Path(selected[1].model).expanduser()
            report = await asyncio.to_thread(diagnose_checkpoint, model)
        self.mtp_report = report

    def _with_mtp_checked(self, profile: ServeProfile, proceed: Callable[[], object]) -> None:
        """Run `proceed` if `profile` can run MTP; offer the patch when it is fixable."""
        model = Path(profile.model).expanduser()
        if profile.speculative.method != "mtp" or not model.is_dir():
            proceed()
        else:
            self._mtp_gate(model, proceed)

    @work(group=CONTROL_GROUP, exit_on_error=False, description="MTP check before a launch")
    async def _mtp_gate(self, model: Path, proceed: Callable[[], object]) -> None:
        """The doctor reads safetensors headers: in a thread, so a slow disk never holds a
        key. In the control group, and done only when what it started is done."""
        from backend.mtp_doctor import Verdict, diagnose_checkpoint
        from tui.screens.confirm import ConfirmScreen

        report = await asyncio.to_thread(diagnose_checkpoint, model)
        self.mtp_report = report
        if report.verdict == Verdict.READY:
            started = proceed()
            if isinstance(started, Worker):
                await started.wait()
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
    async def _patch_then(self, model: Path, proceed: Callable[[], object]) -> str:
        from backend.mtp_patch import patch_checkpoint

        result = await asyncio.to_thread(patch_checkpoint, model)
        self.check_mtp()
        proceed()
        backup = f"; backup in {result.backup_dir}" if result.backup_dir else ""
        return f"Patched {model.name}: {'; '.join(result.actions) or 'nothing to change'}{backup}"

    def action_start_server(self) -> None:
        if self._not_ours():
            return
        chosen = self._require_profile()
        if chosen is not None:

            def start() -> Worker[str]:
                self.notify(f"Starting {chosen[0]}…")
                return self._run_control("start", chosen)

            self._with_mtp_checked(chosen[1], start)

    def action_stop_server(self) -> None:
        from tui.screens.confirm import ConfirmScreen

        if self._not_booted() or self._not_ours():
            return
        # The last poll, not a new /health call: a hung server must not hold the key.
        status = self.server_status or self.supervisor.status()
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
        if self._not_booted() or self._not_ours():
            return
        record = self.supervisor.load_record()
        chosen = (record.profile_name, record.serve_profile) if record else self._require_profile()
        if chosen is not None:
            self.notify(f"Restarting {chosen[0]}…")
            self._run_control("restart", chosen)

    def action_toggle_spec(self) -> None:
        if self._not_booted() or self._not_ours():
            return
        status = self.server_status or self.supervisor.status()
        if status.phase.is_up and status.record is not None:
            profile = status.record.serve_profile
            toggled = profile.model_copy(update={"speculative": profile.speculative.toggled()})
            name = status.record.profile_name

            def restart() -> Worker[str]:
                self.selected_profile = (name, toggled)
                self.notify(f"Speculative decoding → {toggled.speculative.method}; restarting…")
                return self._run_control("restart", (name, toggled))

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
        from backend.config import ConfigNotSaved, save_profile

        if name in self.settings.profiles:
            try:
                save_profile(self.settings, name, profile)
            except ConfigNotSaved as error:
                self.notify(f"Not saved to the config: {error}", severity="warning")

    def action_edit_profile(self) -> None:
        from tui.screens.profile_editor import ProfileEditorScreen

        if self._require_profile() is None or self.profile_name is None:
            return
        if not any(isinstance(screen, ProfileEditorScreen) for screen in self.screen_stack):
            self.push_screen(ProfileEditorScreen(self.profile_name))

    def action_quantize(self) -> None:
        from tui.screens.quantize import QuantizeScreen

        if self._not_booted():
            return
        # One quantize screen at most: each watches the job and would finish() it.
        for screen in self.screen_stack:
            if isinstance(screen, QuantizeScreen):
                return
        self.push_screen(QuantizeScreen())

    def action_bench(self) -> None:
        from tui.screens.bench import BenchScreen  # imported when first opened

        if self._not_booted():
            return
        if not any(isinstance(screen, BenchScreen) for screen in self.screen_stack):
            endpoint = self.endpoint
            self.push_screen(
                BenchScreen(
                    self.supervisor,
                    ready_timeout_s=self.settings.ready_timeout_s,
                    url=endpoint.url if endpoint else None,
                )
            )

    def action_verify(self) -> None:
        """Probe the server qtui runs (the last poll says whether one answers)."""
        if self._not_booted():
            return
        from tui.screens.verify import VerifyScreen

        endpoint = self.endpoint
        if endpoint is not None:
            self.push_screen(VerifyScreen(endpoint.url, api_key_env=endpoint.api_key_env))
            return
        status = self.server_status
        record = status.record if status is not None and status.phase.is_up else None
        if record is None:
            self.notify(
                "No server is running: s starts one, then v verifies it", severity="warning"
            )
            return

        self.push_screen(
            VerifyScreen(
                record.url,
                profile=record.serve_profile,
                log_path=Path(record.log_path),
                api_key_env=record.serve_profile.api_key_env,
            )
        )

    def endpoints(self) -> list[Endpoint | None]:
        """What `w` cycles through: qtui's own server, then the config's `[endpoints]`."""
        from backend.endpoint import Endpoint

        known: list[Endpoint | None] = [None]
        for name, entry in self.settings.endpoints.items():
            known.append(Endpoint(name, entry.url.rstrip("/"), entry.api_key_env))
        if self.endpoint is not None and self.endpoint not in known:
            known.append(self.endpoint)  # the one given with --url
        return known

    def action_switch_endpoint(self) -> None:
        if self._not_booted():
            return
        known = self.endpoints()
        if len(known) == 1:
            self.notify(
                "No other server to watch: add one under [endpoints] in the config, "
                "or open qtui --url URL",
                severity="warning",
                timeout=8,
            )
            return
        shown = self.endpoint
        self.endpoint = known[(known.index(shown) + 1) % len(known)]
        self.server_status = None
        self.served = ""
        self.poll_soon()
        chosen = self.endpoint
        self.notify(
            f"Watching {chosen.name} ({chosen.url})" if chosen else "Watching qtui's server"
        )

    def action_pick_profile(self) -> None:
        from tui.screens.profile_picker import ProfilePicker

        if self._not_booted():
            return

        def chosen(name: str | None) -> None:
            if name:
                self.use_profile(name)

        self.push_screen(ProfilePicker(self.settings.all_profiles(), self.profile_name), chosen)

    def use_profile(self, name: str) -> None:
        self.selected_profile = (name, self.settings.all_profiles()[name])
        self.notify(f"Profile {name} selected: s starts it")

    def restart_with(self, name: str, profile: ServeProfile) -> None:
        """Restart the server with `profile` (the profile editor's Apply)."""
        self._run_control("restart", (name, profile))

    @work(thread=True, group=CONTROL_GROUP, exit_on_error=False, description="server control")
    def _run_control(self, action: str, chosen: tuple[str, ServeProfile] | None) -> str:
        self.poll_soon()  # the watcher follows the start or stop at its quick pace
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
        if worker.is_finished:
            self.poll_soon()
        if event.state == WorkerState.SUCCESS and isinstance(worker.result, str):
            self.notify(worker.result)
        elif event.state == WorkerState.ERROR:
            error = worker.error
            from backend.config import ConfigError
            from backend.engine import EngineError
            from backend.mtp_patch import PatchError
            from backend.serve_args import LaunchRefused
            from backend.supervisor import SupervisorError

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
            "Switch server",
            "qtui's own server or one of the config's [endpoints]",
            self.action_switch_endpoint,
        )
        yield SystemCommand(
            "Verify the server",
            "Health, models, a streamed reply, parsers, spec decoding, KV cache: pass or fail",
            self.action_verify,
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
        for name in self.settings.all_profiles() if self.booted else ():
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
    endpoint: Endpoint | None = None,
) -> QtuiApp:
    """The one factory the CLI and the tests use to build the panel.

    Without `settings` the config is read after the first frame (the CLI); tests
    hand theirs in. Given settings without a supervisor get one here.
    """
    if settings is not None and supervisor is None:
        from backend.engine import EngineError, resolve_engine
        from backend.supervisor import ServerSupervisor

        try:
            engine = resolve_engine(settings.vllm)
        except EngineError:
            engine = None  # the panel still opens; starting says how to fix it
        supervisor = ServerSupervisor(engine)
    return QtuiApp(
        settings, supervisor, profile_name=profile, poll_interval_s=poll_interval_s,
        endpoint=endpoint,
    )  # fmt: skip
