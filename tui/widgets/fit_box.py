"""FitBox: will the profile being edited fit, re-predicted as the user types.

The prediction (backend.fit) reads config.json and the safetensors headers, so it
runs in a thread worker, 0.3 s after the last edit; a newer edit cancels an older
run (one exclusive group). backend.fit keeps each checkpoint's reading, so from the
second run on an edit costs only the arithmetic.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Static
from textual.worker import Worker, WorkerState, get_current_worker

from backend.config import ServeProfile
from backend.engine import Engine
from backend.fit import DtypeFit, FitError, FitReport, FitTarget, human_bytes, local_target

FIT_GROUP = "profile-editor-fit"
DEBOUNCE_S = 0.3
"""Quiet time after the last edit before predicting: typing 32768 predicts once."""
NOT_LOCAL = "fit: the checkpoint is not local"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def figures_text(report: FitReport) -> str:
    """Two lines: what is loaded and what one token costs; what the budget holds."""
    chosen = report.chosen
    state = (
        f" + {human_bytes(chosen.state_bytes_per_sequence)}/seq"
        if chosen.state_bytes_per_sequence
        else ""
    )
    tp = f" per rank (TP {report.tensor_parallel_size})" if report.tensor_parallel_size > 1 else ""
    budget = (
        f"budget {human_bytes(report.budget_bytes)}"
        if report.budget_bytes is not None
        else "budget unknown"
    )
    first = (
        f"weights {human_bytes(report.weights_loaded_bytes)}{tp} · "
        f"KV {human_bytes(chosen.attention_bytes_per_token)}/token{state} · {budget}"
    )
    if chosen.kv_tokens is None:
        return first
    second = (
        f"{_count(chosen.kv_tokens)} KV tokens · largest context {_count(chosen.largest_context)}"
        f" · concurrency {chosen.concurrency or 0:.2f} at {report.max_model_len:,}"
    )
    return f"{first}\n{second}"


def verdict_text(report: FitReport) -> str:
    """The verdict, and the fixes when it does not fit or is tight."""
    if report.verdict == "fits":
        seqs = report.max_num_seqs
        head = f"✔ fits (max_num_seqs {seqs} at full length)" if seqs else "✔ fits"
        note = report.reason.partition("; note ")[2]
        return f"{head}; note {note}" if note else head
    if report.verdict == "unknown":
        return "? unknown: set kv_cache_memory_bytes to check (no GPU seen)"
    mark = "✖" if report.verdict == "does not fit" else "!"
    text = f"{mark} {report.verdict}: {report.reason}"
    if report.fixes:
        text += "\n  fix: " + "; or ".join(report.fixes)
    return text


def _other(fit: DtypeFit) -> str:
    if fit.kv_tokens is None:
        return f"{'/'.join(fit.names)} {human_bytes(fit.attention_bytes_per_token)}/token"
    return f"{'/'.join(fit.names)} {_count(fit.kv_tokens)} (ctx {_count(fit.largest_context)})"


def others_text(report: FitReport) -> str:
    """The other KV dtypes, one short line."""
    if not report.others:
        return ""
    return "other KV dtypes: " + " · ".join(_other(fit) for fit in report.others)


class FitBox(Vertical):
    """The fit figures of the latest valid profile; `request()` it on every edit."""

    class Predicted(Message):
        """A prediction landed (`report`), or could not be made (`problem`)."""

        def __init__(
            self,
            box: FitBox,
            profile: ServeProfile,
            report: FitReport | None,
            problem: str | None,
        ) -> None:
            super().__init__()
            self.box = box
            self.profile = profile
            self.report = report
            self.problem = problem

        @property
        def control(self) -> FitBox:
            return self.box

    def __init__(self, engine: Engine | None, kv_dtypes: tuple[str, ...], *, id: str) -> None:
        super().__init__(id=id)
        self.engine = engine
        self.kv_dtypes = kv_dtypes
        self.requested: ServeProfile | None = None
        """The newest profile asked for."""
        self.shown: ServeProfile | None = None
        """The profile whose figures are on screen (== requested once settled)."""
        self.report: FitReport | None = None
        self._target: FitTarget | None = None
        """This machine, looked at once (the worker's first run) per box."""
        self._debounce: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Static(Content("fit: reading the checkpoint…"), id="fit-figures")
        yield Static(id="fit-verdict")
        yield Static(id="fit-others")

    def on_mount(self) -> None:
        self.border_title = "fit"

    @property
    def settled(self) -> bool:
        """The figures shown are those of the newest request."""
        return self.requested is not None and self.shown == self.requested

    def request(self, profile: ServeProfile | None, *, now: bool = False) -> None:
        """Predict for `profile` after DEBOUNCE_S of quiet (at once with `now`).

        None (a field has an error) drops a pending prediction and keeps the last
        figures, dimmed, until the form reads again."""
        self.set_class(profile is None or profile != self.shown, "-stale")
        if profile == self.requested:
            return
        if self._debounce is not None:
            self._debounce.stop()
            self._debounce = None
        self.requested = profile
        if profile is None or profile == self.shown:
            return
        if now:
            self._predict(profile)
        else:
            self._debounce = self.set_timer(DEBOUNCE_S, lambda: self._predict(profile))

    @work(thread=True, exclusive=True, group=FIT_GROUP, exit_on_error=False,
          description="predict the KV-cache fit")  # fmt: skip
    def _predict(self, profile: ServeProfile) -> None:
        worker = get_current_worker()
        report: FitReport | None = None
        problem: str | None = None
        if not Path(profile.model).expanduser().is_dir():
            problem = NOT_LOCAL
        else:
            if self._target is None:
                self._target = replace(local_target(self.engine), kv_dtypes=self.kv_dtypes)
            try:
                report = self._target.predict(profile)
            except FitError as error:
                problem = f"fit: {error}"
        if not worker.is_cancelled:
            self.post_message(self.Predicted(self, profile, report, problem))

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        """A bug in the arithmetic shows in the box, not as a crash of the editor."""
        if event.worker.group != FIT_GROUP or event.state is not WorkerState.ERROR:
            return
        event.stop()
        if self.requested is not None:
            problem = f"fit: could not predict ({event.worker.error!r})"
            self._show(self.requested, None, problem)

    @on(Predicted)
    def _predicted(self, message: Predicted) -> None:
        if message.profile == self.requested:  # else a newer edit is on its way
            self._show(message.profile, message.report, message.problem)

    def _show(self, profile: ServeProfile, report: FitReport | None, problem: str | None) -> None:
        self.shown, self.report = profile, report
        self.set_class(False, "-stale")
        figures = self.query_one("#fit-figures", Static)
        verdict = self.query_one("#fit-verdict", Static)
        others = self.query_one("#fit-others", Static)
        figures.set_class(report is None, "-quiet")
        if report is None:
            figures.update(Content(problem or NOT_LOCAL))
            verdict.display = others.display = False
            return
        figures.update(Content(figures_text(report)))
        verdict.update(Content(verdict_text(report)))
        for name in ("fits", "tight", "does-not-fit", "unknown"):
            verdict.set_class(report.verdict.replace(" ", "-") == name, f"-{name}")
        verdict.display = True
        others.update(Content(others_text(report)))
        others.display = bool(report.others)
