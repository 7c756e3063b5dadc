"""The Verify screen: `qtui verify` in a modal, the probes run in a thread worker.

Each verdict is posted up as it is made (a slow or hung server shows which
probe it is stuck on); `r` runs them again, Esc closes (and cancels between
probes).
"""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.markup import escape
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Static
from textual.worker import Worker, WorkerState, get_current_worker

from backend.config import ServeProfile
from backend.verify import Check, Outcome, VerifyTarget, any_failed, verify

MARK_STYLE = {Outcome.PASSED: "$success", Outcome.FAILED: "$error", Outcome.SKIPPED: "$text-muted"}
VERIFY_GROUP = "verify"


def check_content(check: Check) -> Content:
    """One check: coloured mark, name, reason; the fix on its own line. Built as Content,
    not markup: reasons quote server text (`[DONE]`, JSON) that markup would eat."""
    parts: list[str | tuple[str, str]] = [
        (check.outcome.mark, f"bold {MARK_STYLE[check.outcome]}"),
        " ",
        (check.name, "bold"),
        f": {check.reason}",
    ]
    if check.fix:
        parts += ["\n  ", (f"→ {check.fix}", "$warning")]
    return Content.assemble(*parts)


class VerifyScreen(ModalScreen[None]):
    """Probes one server and lists the verdicts."""

    DEFAULT_CSS = """
    VerifyScreen { align: center middle; }
    VerifyScreen #verify-box {
        width: 100%; max-width: 110; height: auto; max-height: 90%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    VerifyScreen #verify-title { height: auto; }
    VerifyScreen #verify-status { height: auto; color: $text-muted; margin-bottom: 1; }
    VerifyScreen #verify-checks { height: auto; max-height: 30; }
    VerifyScreen .verify-check { height: auto; }
    VerifyScreen #verify-status.-failed { color: $error; }
    VerifyScreen #verify-status.-passed { color: $success; }
    """

    BINDINGS = [
        Binding("escape,q", "dismiss", "Close", id="verify_close", tooltip="Close the checks"),
        Binding("r", "rerun", "Again", id="verify_rerun", tooltip="Run every probe again"),
    ]  # fmt: skip

    class Checked(Message):
        """One probe's verdict, posted from the worker as it is made."""

        def __init__(self, screen: VerifyScreen, check: Check) -> None:
            super().__init__()
            self.verify_screen = screen
            self.check = check

        @property
        def control(self) -> VerifyScreen:
            return self.verify_screen

    class Finished(Message):
        """Every probe has run; `checks` in order."""

        def __init__(self, screen: VerifyScreen, checks: list[Check]) -> None:
            super().__init__()
            self.verify_screen = screen
            self.checks = checks

        @property
        def control(self) -> VerifyScreen:
            return self.verify_screen

    def __init__(
        self,
        url: str,
        *,
        profile: ServeProfile | None = None,
        log_path: Path | None = None,
        api_key_env: str | None = None,
    ) -> None:
        super().__init__()
        key_env = api_key_env or (profile.api_key_env if profile is not None else None)
        self.target = VerifyTarget(url, key_env, profile, log_path)
        self.checks: list[Check] = []
        self.running = False

    def compose(self) -> ComposeResult:
        against = "its profile" if self.target.profile is not None else "no profile (URL only)"
        with Vertical(id="verify-box"):
            yield Static(
                f"[b]Verify[/] {escape(self.target.url)} against {against}   "
                "[dim]r again · esc close[/]",
                id="verify-title",
            )
            yield Static("", id="verify-status")
            yield VerticalScroll(id="verify-checks")

    def on_mount(self) -> None:
        self.action_rerun()

    def action_rerun(self) -> None:
        if self.running:
            return
        self.running = True
        self.checks = []
        self.query_one("#verify-checks", VerticalScroll).remove_children()
        status = self.query_one("#verify-status", Static)
        status.remove_class("-failed", "-passed")
        status.update("probing…")
        self.run_probes()

    @work(
        thread=True, exclusive=True, exit_on_error=False, group=VERIFY_GROUP,
        description="verify the server",
    )  # fmt: skip
    def run_probes(self) -> None:
        worker = get_current_worker()

        def checked(check: Check) -> None:
            self.post_message(self.Checked(self, check))

        checks = verify(self.target, on_check=checked, cancelled=lambda: worker.is_cancelled)
        if not worker.is_cancelled:
            self.post_message(self.Finished(self, checks))

    @on(Checked)
    def _add(self, event: Checked) -> None:
        self.checks.append(event.check)
        box = self.query_one("#verify-checks", VerticalScroll)
        box.mount(Static(check_content(event.check), classes="verify-check"))
        self.query_one("#verify-status", Static).update(f"probing… ({len(self.checks)} done)")

    @on(Finished)
    def _done(self, event: Finished) -> None:
        self.running = False
        counts = {outcome: 0 for outcome in Outcome}
        for check in event.checks:
            counts[check.outcome] += 1
        verdict = "serving wrong" if any_failed(event.checks) else "serving right"
        status = self.query_one("#verify-status", Static)
        status.set_class(any_failed(event.checks), "-failed")
        status.set_class(not any_failed(event.checks), "-passed")
        status.update(
            f"{verdict}: {counts[Outcome.PASSED]} passed, {counts[Outcome.FAILED]} failed, "
            f"{counts[Outcome.SKIPPED]} skipped"
        )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != VERIFY_GROUP:
            return
        if event.state is WorkerState.ERROR:
            self.running = False
            status = self.query_one("#verify-status", Static)
            status.add_class("-failed")
            status.update(escape(f"the probes broke: {event.worker.error}"))
        elif event.state is WorkerState.CANCELLED:
            self.running = False
