"""The two-line server summary at the top of the Server screen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.content import Content
from textual.markup import escape
from textual.reactive import reactive
from textual.widgets import Static

from backend.endpoint import NOT_OURS
from backend.server_state import Phase, ServerStatus

if TYPE_CHECKING:
    from textual.timer import Timer

    from backend.config import ServeProfile
    from backend.endpoint import Endpoint

PHASE_MARK = {
    Phase.READY: "●",
    Phase.STARTING: "◐",
    Phase.LOADING: "◑",
    Phase.STOPPING: "◒",
    Phase.FAILED: "✖",
    Phase.STOPPED: "○",
    Phase.NOT_RESPONDING: "◌",
}

PHASE_COLOUR = {
    Phase.READY: "$server-up",
    Phase.STARTING: "$server-busy",
    Phase.LOADING: "$server-busy",
    Phase.STOPPING: "$server-busy",
    Phase.FAILED: "$error",
    Phase.STOPPED: "$server-down",
    Phase.NOT_RESPONDING: "$error",
}


def format_uptime(seconds: float | None) -> str:
    """Seconds in the first minute (a start is watched closely), then minutes: a server
    up for a while repaints its bar once a minute, not every second."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else f"{secs}s"


def spec_label(profile: ServeProfile) -> str:
    spec = profile.speculative
    if not spec.enabled:
        return f"off (m: {spec.toggle_method})"
    return f"{spec.method} x{spec.num_speculative_tokens}"


class ServerStatusBar(Static):
    """Phase, profile, URL, spec, KV dtype, uptime: what the server is doing now."""

    status: reactive[ServerStatus | None] = reactive(None)
    """The last polled status; None before the first poll."""
    profile_name: reactive[str] = reactive("")
    """The profile shown when no server runs (the one `s` would start)."""
    profile: reactive[ServeProfile | None] = reactive(None)
    endpoint: reactive[Endpoint | None] = reactive(None)
    """A server qtui did not start, shown instead of its own."""
    served: reactive[str] = reactive("")
    """What that server serves (its /v1/models), once it has answered."""
    booting: reactive[bool] = reactive(True)
    """The App has not read the config yet (the first frame comes before it)."""
    mtp_note: reactive[str] = reactive("")
    """Why MTP cannot be switched on, or that it needs a patch; empty when fine."""

    _uptime_shown = ""
    """The uptime's words on screen now."""
    _ticker: Timer | None = None
    """The wake-up for the uptime's next change of words."""

    def watch_status(self) -> None:
        # The App passes a status only when it changes; the uptime ticks here.
        self._tick_uptime()

    def _tick_uptime(self) -> None:
        """Repaint when the uptime's words change, and wake again just when they next do:
        every second in the first minute, then once a minute (an idle panel's every
        wake-up costs CPU)."""
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
        seconds = self.status.uptime_s if self.status is not None else None
        if seconds is None:
            return
        shown = format_uptime(seconds)
        if shown != self._uptime_shown:
            self._uptime_shown = shown
            self.refresh()
        wait = 1 - seconds % 1 if seconds < 60 else 60 - seconds % 60
        self._ticker = self.set_timer(wait + 0.01, self._tick_uptime)

    def render(self) -> Content:
        if self.endpoint is not None:
            return self._render_endpoint(self.endpoint)
        status = self.status
        phase = status.phase if status else Phase.STOPPED
        record = status.record if status and phase.is_up else None
        profile: ServeProfile | None
        if record is not None:
            name, profile, url = record.profile_name, record.serve_profile, record.url
        else:
            name, profile = self.profile_name, self.profile
            url = f"http://{profile.host}:{profile.port}" if profile else "-"
        colour = PHASE_COLOUR[phase]
        # Before the first poll the phase is unknown: saying "stopped" would be a guess.
        mark = f"[bold {colour}]{PHASE_MARK[phase]} {phase.value:<8}[/]" if status else "… checking"
        line1 = (
            f"{mark}  [b]{escape(name or ('' if self.booting else 'no profile'))}[/]  {escape(url)}"
        )
        if record is not None and status is not None:
            line1 += f"  [$foreground-muted]up[/] {format_uptime(status.uptime_s)}"
            line1 += f"  [$foreground-muted]pid[/] {record.pid}"
        if profile is not None:
            ready = ""
            if record is not None and record.ready_after_s is not None:
                ready = f" [$foreground-muted](ready in {record.ready_after_s:.0f} s)[/]"
            parts = [
                f"[$foreground-muted]spec[/] {escape(spec_label(profile))}{ready}",
                f"[$foreground-muted]kv[/] {escape(profile.kv_cache_dtype)}",
            ]
            stage = status.stage if status is not None else None
            if stage is not None:
                # While loading, what vLLM is doing says more than the model path.
                parts.append(f"[$server-busy]{escape(stage.describe())}[/]")
            else:
                parts.append(f"[$foreground-muted]model[/] {escape(profile.model)}")
            if self.mtp_note:
                parts.append(f"[$warning]{escape(self.mtp_note)}[/]")
            line2 = "   ".join(parts)
        elif self.booting:
            line2 = "[$foreground-muted]reading the config…[/]"
        else:
            line2 = "[i]no serve profile: run `qtui init` or pass --profile[/]"
        return Content.from_markup(line1 + "\n" + line2)

    def _render_endpoint(self, endpoint: Endpoint) -> Content:
        status = self.status
        if status is None:
            mark = "… checking"
        else:
            phase = status.phase
            mark = f"[bold {PHASE_COLOUR[phase]}]{PHASE_MARK[phase]} {phase.value:<8}[/]"
        where = "" if endpoint.url.endswith(f"://{endpoint.name}") else f"  {endpoint.url}"
        line1 = f"{mark}  [b]{escape(endpoint.name)}[/]{escape(where)}  [$warning]{NOT_OURS}[/]"
        if status is not None and status.reason and status.phase is not Phase.READY:
            detail = f"[$warning]{escape(status.reason)}[/]"
        elif self.served:
            detail = f"[$foreground-muted]serves[/] {escape(self.served)}"
        else:
            detail = "[$foreground-muted]chat, telemetry, verify (v) and bench work here[/]"
        line2 = f"[$foreground-muted]watching (w: next)[/]  {detail}"
        return Content.from_markup(line1 + "\n" + line2)
