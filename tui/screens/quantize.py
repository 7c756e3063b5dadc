"""The Quantize screen: a form for an AutoRound job, then its progress, GPU memory and log.

The job is a child process in its own session (backend/quantize.py), so this
screen only watches it: closing the screen or quitting qtui leaves it
running, and opening the screen again (in this qtui or a later one) picks it
up from the state file. One thread worker on the screen polls the job, the
GPU sampler and the log, and posts messages; it dies with the screen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, Footer, Input, Label, Log, ProgressBar, Select, Static
from textual.worker import Worker, WorkerState, get_current_worker

from backend.config import ConfigNotSaved, save_profile
from backend.gpu import GpuSample, GpuSampler
from backend.log_follow import LogFollower
from backend.quantize import (
    PRESETS,
    FinishReport,
    JobPhase,
    JobSpec,
    QuantizeError,
    QuantizeJob,
    QuantizeProgress,
)
from tui.profile_fields import profile_name_problem
from tui.quantize_form import (
    COUNT_FIELDS,
    DEVICES,
    FIELDS,
    TEXT_FIELDS,
    FormReading,
    count_placeholders,
    default_output_dir,
    field_problem,
    finish_text,
    form_values_from,
    gpu_line,
    preset_label,
    progress_line,
    read_form,
    suggest_profile_name,
)
from tui.screens.confirm import ConfirmScreen

if TYPE_CHECKING:
    from tui.app import QtuiApp

WATCH_GROUP = "quantize-watch"
CONTROL_GROUP = "quantize-control"
WIDE_LAYOUT_MIN_COLUMNS = 120
LOG_LINES_KEPT = 2000


class _Check(Validator):
    """A Textual validator around one of the form's checks (tui.quantize_form)."""

    def __init__(self, problem: Callable[[str], str | None]) -> None:
        super().__init__()
        self.problem = problem

    def validate(self, value: str) -> ValidationResult:
        found = self.problem(value)
        return self.failure(found, value) if found else self.success()


class QuantizeScreen(Screen[None]):
    """Form → progress bar, phase, GPU memory, log tail → doctor verdict and a serve profile."""

    AUTO_FOCUS = "#model-dir"

    DEFAULT_CSS = """
    QuantizeScreen { layout: vertical; }
    QuantizeScreen #quantize-body { height: 1fr; }
    QuantizeScreen #quantize-form { width: 1fr; height: 1fr; padding: 0 1; }
    QuantizeScreen #quantize-job { width: 1fr; height: 1fr; padding: 0 1; display: none; }
    QuantizeScreen.-job #quantize-form { display: none; }
    QuantizeScreen.-job #quantize-job { display: block; }
    QuantizeScreen.-wide #quantize-form { display: block; width: 72; }
    QuantizeScreen.-wide #quantize-job { display: block; border-left: vkey $panel; }
    QuantizeScreen .heading { text-style: bold; color: $primary; height: 1; }
    QuantizeScreen .field { height: auto; margin: 0 0 1 0; }
    QuantizeScreen .field-label { width: 12; color: $foreground-muted; }
    QuantizeScreen .field Input, QuantizeScreen .field Select { width: 1fr; }
    QuantizeScreen #form-problem, QuantizeScreen #job-error {
        color: $error; height: auto; display: none;
    }
    QuantizeScreen #form-problem.shown, QuantizeScreen #job-error.shown { display: block; }
    QuantizeScreen #job-phase { height: 1; }
    QuantizeScreen #job-bar { height: 1; display: none; }
    QuantizeScreen.-job #job-bar { display: block; }
    QuantizeScreen #job-bar Bar { width: 1fr; }
    QuantizeScreen #profile-row Label { width: 14; color: $foreground-muted; }
    QuantizeScreen #job-gpu { height: 1; color: $foreground-muted; }
    QuantizeScreen #job-result { height: auto; color: $success; display: none; }
    QuantizeScreen #job-result.shown { display: block; }
    QuantizeScreen #profile-row { height: auto; display: none; }
    QuantizeScreen #profile-row.shown { display: block; }
    QuantizeScreen #profile-name { width: 1fr; }
    QuantizeScreen #job-log {
        height: 1fr; min-height: 4; border: round $panel;
        border-title-color: $foreground-muted; scrollbar-size: 1 1;
    }
    """

    BINDINGS = [
        Binding("ctrl+s", "start_job", "Start", id="quantize_start",
                tooltip="Start quantizing with the form's settings"),
        Binding("x", "cancel_job", "Cancel job", id="quantize_cancel",
                tooltip="Stop the running quantize job (asks first)"),
        Binding("n", "new_job", "New job", id="quantize_new",
                tooltip="Show the form to start another job"),
        Binding("escape", "close", "Close", id="quantize_close",
                tooltip="Back to the server screen; the job keeps running"),
    ]  # fmt: skip

    class JobPolled(Message):
        """The current job's progress (None: no job yet) and a GPU reading, once a tick."""

        def __init__(
            self,
            job: QuantizeJob | None,
            progress: QuantizeProgress | None,
            sample: GpuSample,
        ) -> None:
            super().__init__()
            self.job = job
            self.progress = progress
            self.sample = sample

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, QuantizeScreen.JobPolled)

    class JobLogLines(Message):
        """New lines of the job's log; `reset` when the log begins afresh (another job's)."""

        def __init__(self, job_id: str, lines: list[str], reset: bool) -> None:
            super().__init__()
            self.job_id = job_id
            self.lines = lines
            self.reset = reset

    class JobEnded(Message):
        """The job finished: the doctor's report when it succeeded, else the error."""

        def __init__(
            self,
            job_id: str,
            progress: QuantizeProgress,
            report: FinishReport | None,
            error: str | None,
        ) -> None:
            super().__init__()
            self.job_id = job_id
            self.progress = progress
            self.report = report
            self.error = error

    def __init__(
        self,
        state_dir: Path | None = None,
        sampler: GpuSampler | None = None,
        poll_interval_s: float | None = None,
    ) -> None:
        super().__init__()
        self.state_dir = state_dir
        self.sampler = sampler
        self._poll_interval_s = poll_interval_s
        self.job_id: str | None = None
        """The job shown in the job panel (running or finished)."""
        self.phase: JobPhase | None = None
        self.report: FinishReport | None = None
        self._started: QuantizeJob | None = None
        """The job this screen started: its Popen reaps the child and speeds up cancel."""
        self._device_decided = False
        self._device_default = "cpu"
        """The device the screen picked; cuda once the sampler has seen a GPU."""

    @property
    def qtui(self) -> QtuiApp:
        return cast("QtuiApp", self.app)

    @property
    def running(self) -> bool:
        return self.phase is not None and not self.phase.finished

    # -- layout -------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="quantize-body"):
            with VerticalScroll(id="quantize-form"):
                yield Static("Quantize with AutoRound (W4A16, group 128, sym)", classes="heading")
                yield from self._text_field("model-dir")
                yield from self._text_field("output-dir")
                yield from self._field(
                    "Preset",
                    Select([(preset_label(name), name) for name in PRESETS], value="default",
                           allow_blank=False, id="preset", compact=True),
                )  # fmt: skip
                for field in COUNT_FIELDS:
                    yield from self._text_field(field.id)
                yield from self._text_field("dataset")
                yield from self._field(
                    "Device",
                    Select([(device, device) for device in DEVICES], value="cpu",
                           allow_blank=False, id="device", compact=True),
                )  # fmt: skip
                yield Static(id="form-problem")
                yield Button("Start (ctrl+s)", id="start-job", variant="primary", compact=True)
            with Vertical(id="quantize-job"):
                yield Static("No quantize job yet", id="job-title", classes="heading")
                yield Static(id="job-phase")
                yield ProgressBar(id="job-bar", show_eta=False)
                yield Static("GPU: …", id="job-gpu")
                yield Static(id="job-result")
                yield Static(id="job-error")
                with Horizontal(id="profile-row"):
                    yield Label("Profile name")
                    yield Input(placeholder="profile name", id="profile-name", compact=True)
                    yield Button("Create serve profile", id="create-profile", compact=True)
                yield Log(id="job-log", max_lines=LOG_LINES_KEPT)
        yield Footer()

    def _text_field(self, field_id: str) -> ComposeResult:
        field = FIELDS[field_id]
        # The output dir is checked against the model dir as it is now.
        check = (
            self._output_problem if field_id == "output-dir" else partial(field_problem, field_id)
        )
        control = Input(
            placeholder=field.placeholder,
            id=field.id,
            type="integer" if field.count else "text",
            compact=True,
            valid_empty=field.count,
            validators=[_Check(check)],
        )
        yield from self._field(field.label, control)

    @staticmethod
    def _field(label: str, widget: Input | Select[str]) -> ComposeResult:
        with Horizontal(classes="field"):
            yield Label(label, classes="field-label")
            yield widget

    def on_mount(self) -> None:
        log = self.query_one("#job-log", Log)
        log.border_title = "job log"
        log.anchor()  # stays at the newest line when the result lines above shrink it
        self._show_preset(self.query_one("#preset", Select).value)
        self._apply_width(self.size.width)
        self.watch_job()

    def on_resize(self) -> None:
        self._apply_width(self.size.width)

    def _apply_width(self, columns: int) -> None:
        self.set_class(columns >= WIDE_LAYOUT_MIN_COLUMNS, "-wide")

    # -- the watcher --------------------------------------------------------------------
    @work(thread=True, exclusive=True, group=WATCH_GROUP, exit_on_error=False,
          description="watch the quantize job")  # fmt: skip
    def watch_job(self) -> None:
        worker = get_current_worker()
        sampler = self.sampler or GpuSampler()
        interval = self._poll_interval_s or float(getattr(self.app, "poll_interval_s", 1.0))
        follower: LogFollower | None = None
        ended: str | None = None
        watched_pgid: int | None = None
        try:
            while not worker.is_cancelled:
                job = QuantizeJob.current(self.state_dir)
                if job is None:
                    self.post_message(self.JobPolled(None, None, sampler.sample()))
                else:
                    if job.record.pgid != watched_pgid:
                        watched_pgid = job.record.pgid
                        sampler.watch(watched_pgid)  # GPU memory held by the job's processes
                    progress = job.progress()
                    if follower is None:
                        follower = LogFollower(
                            job.record.log_path, start_lines=LOG_LINES_KEPT, cr_ends_line=True
                        )
                    follower.path = job.record.log_path  # another job: its log starts over
                    lines = [line.rstrip() for line in follower.read_new()]
                    lines = [line for line in lines if line]
                    if lines or follower.started_over:
                        self.post_message(
                            self.JobLogLines(job.record.job_id, lines, follower.started_over)
                        )
                    self.post_message(self.JobPolled(job, progress, sampler.sample()))
                    if progress.phase.finished and ended != job.record.job_id:
                        ended = job.record.job_id
                        self._end(job, progress)
                _sleep_unless_cancelled(interval, worker)
        finally:
            if self.sampler is None:
                sampler.close()

    def _end(self, job: QuantizeJob, progress: QuantizeProgress) -> None:
        """In the watcher's thread: reap our child, run the doctor (+patch) once, report."""
        started = self._started
        if started is not None and started.record.job_id == job.record.job_id:
            started.is_running()  # polls the Popen, which reaps the exited child
        report, error = None, progress.error
        if progress.phase is JobPhase.DONE:
            try:
                report = job.finish()
            except (QuantizeError, OSError, ValueError) as failure:
                error = f"the doctor/patch step failed: {failure}"
        elif progress.phase is JobPhase.CANCELLED:
            error = "cancelled"
        self.post_message(self.JobEnded(job.record.job_id, progress, report, error))

    @on(JobPolled)
    def _show_poll(self, message: JobPolled) -> None:
        self._choose_device(message.sample)
        self.query_one("#job-gpu", Static).update(Content(gpu_line(message.sample)))
        job, progress = message.job, message.progress
        if job is None or progress is None:
            return
        if job.record.job_id != self.job_id:
            self._show_new_job(job, running=not progress.phase.finished)
        self.phase = progress.phase
        self.query_one("#job-phase", Static).update(Content(progress_line(progress)))
        bar = self.query_one("#job-bar", ProgressBar)
        if progress.total_blocks:
            bar.update(total=progress.total_blocks, progress=progress.done_blocks)
        elif progress.phase is JobPhase.DONE:
            bar.update(total=1, progress=1)
        self.refresh_bindings()

    def _show_new_job(self, job: QuantizeJob, running: bool) -> None:
        self.job_id = job.record.job_id
        self.report = None
        spec = job.record.spec
        title = f"Job {self.job_id}: {Path(spec['model']).name} ({spec.get('preset')}, "
        title += f"{spec.get('iters')} iters, {spec.get('device')})"
        self.query_one("#job-title", Static).update(Content(title))
        self.query_one("#job-bar", ProgressBar).update(total=None, progress=0)
        for widget_id in ("#job-result", "#job-error", "#profile-row"):
            self.query_one(widget_id).remove_class("shown")
        self.add_class("-job")
        self._fill_form_from(spec)
        form_in_use = self.query_one("#quantize-form").has_focus_within and self.has_class("-wide")
        if not form_in_use or running:
            self.query_one("#job-log", Log).focus()  # where x (cancel) and n (new job) work

    def _fill_form_from(self, spec: dict[str, object]) -> None:
        """An empty form (a re-attached job) takes the job's settings: one edit to run it again."""
        if any(self.query_one(f"#{field.id}", Input).value for field in TEXT_FIELDS):
            return
        for field_id, value in form_values_from(spec).items():
            self.query_one(f"#{field_id}", Input).value = value
        if spec.get("preset") in PRESETS:
            self.query_one("#preset", Select).value = str(spec["preset"])
        if spec.get("device") in DEVICES:
            self.query_one("#device", Select).value = str(spec["device"])
            self._device_decided = True
        self._show_problem(None)

    @on(JobLogLines)
    def _show_log(self, message: JobLogLines) -> None:
        log = self.query_one("#job-log", Log)
        if message.reset:
            log.clear()
        log.write_lines(message.lines)

    @on(JobEnded)
    def _show_end(self, message: JobEnded) -> None:
        if message.job_id != self.job_id:
            return
        self.phase = message.progress.phase
        self.report = message.report
        error = self.query_one("#job-error", Static)
        if message.report is not None:
            result = self.query_one("#job-result", Static)
            result.update(Content(finish_text(message.report)))
            result.add_class("shown")
            name = self.query_one("#profile-name", Input)
            name.value = self._suggest_profile_name(message.report.output_dir)
            self.query_one("#profile-row").add_class("shown")
            self.query_one("#create-profile", Button).disabled = False
        if message.error:
            text = message.error
            if message.progress.phase is JobPhase.FAILED:
                text = f"✖ quantize job failed: {message.error}"
            error.update(Content(text))
            error.add_class("shown")
        self.refresh_bindings()

    def _suggest_profile_name(self, output_dir: str) -> str:
        return suggest_profile_name(output_dir, set(self.qtui.settings.all_profiles()))

    # -- the form -----------------------------------------------------------------------
    def _output_problem(self, text: str) -> str | None:
        return field_problem("output-dir", text, self.query_one("#model-dir", Input).value)

    @on(Input.Changed)
    def _check_field(self, event: Input.Changed) -> None:
        if event.input.id == "profile-name":
            return
        if event.input.id == "model-dir":
            placeholder = default_output_dir(event.value) or "next to the model"
            self.query_one("#output-dir", Input).placeholder = placeholder
        result = event.validation_result
        problem = result.failure_descriptions[0] if result and not result.is_valid else None
        self._show_problem(problem)

    def _show_problem(self, problem: str | None) -> None:
        line = self.query_one("#form-problem", Static)
        line.update(Content(f"✖ {problem}" if problem else ""))
        line.set_class(bool(problem), "shown")

    @on(Select.Changed, "#preset")
    def _preset_changed(self, event: Select.Changed) -> None:
        self._show_preset(event.value)

    def _show_preset(self, name: object) -> None:
        for field_id, placeholder in count_placeholders(str(name)).items():
            self.query_one(f"#{field_id}", Input).placeholder = placeholder

    @on(Select.Changed, "#device")
    def _device_chosen(self, event: Select.Changed) -> None:
        # A value other than the one the screen chose is the user's, and it wins over the probe.
        if event.value != self._device_default:
            self._device_decided = True

    def _choose_device(self, sample: GpuSample) -> None:
        if self._device_decided:
            return
        self._device_decided = True
        self._device_default = "cuda" if sample.has_gpu else "cpu"
        self.query_one("#device", Select).value = self._device_default

    def read_form(self) -> FormReading:
        """The job spec, or the first problem and the field it is in; nothing is cleared."""
        texts = {field.id: self.query_one(f"#{field.id}", Input).value for field in TEXT_FIELDS}
        preset = str(self.query_one("#preset", Select).value)
        return read_form(texts, preset, str(self.query_one("#device", Select).value))

    # -- actions ------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_job":
            return self.running
        if action == "start_job":
            if self.has_class("-job") and not self.has_class("-wide"):
                return False  # the form is hidden: n shows it first
            return None if self.running else True
        if action == "new_job":
            return self.has_class("-job") and not self.has_class("-wide") and not self.running
        return True

    @on(Button.Pressed, "#start-job")
    def action_start_job(self) -> None:
        if self.running:
            self._show_problem("a quantize job is running: cancel it (x) or wait for it")
            return
        form = self.read_form()
        if form.spec is None:
            self._show_problem(form.problem)
            if form.field_id:
                self.query_one(f"#{form.field_id}").focus()
            return
        self._show_problem(None)
        self._start(form.spec)

    @work(thread=True, group=CONTROL_GROUP, exit_on_error=False, name="start",
          description="start the quantize job")  # fmt: skip
    def _start(self, spec: JobSpec) -> QuantizeJob:
        job = QuantizeJob.start(spec, self.qtui.settings.quant_python, self.state_dir)
        self._started = job
        return job

    def action_cancel_job(self) -> None:
        if not self.running or self.job_id is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.notify("Cancelling the quantize job…")
                self._cancel()

        question = f"Cancel quantize job {self.job_id}? The tuning done so far is lost."
        self.app.push_screen(
            ConfirmScreen(question, yes="Cancel the job", no="Keep it running"), confirmed
        )

    @work(thread=True, group=CONTROL_GROUP, exit_on_error=False, name="cancel",
          description="cancel the quantize job")  # fmt: skip
    def _cancel(self) -> QuantizeProgress | None:
        job = QuantizeJob.current(self.state_dir)
        if job is None:
            return None
        started = self._started
        if started is not None and started.record.job_id == job.record.job_id:
            job = started  # holds the Popen: cancel waits on it instead of on a zombie
        return job.cancel()

    @on(Worker.StateChanged)
    def _control_result(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group != CONTROL_GROUP:
            return
        if event.state == WorkerState.SUCCESS and worker.name == "start":
            job = cast(QuantizeJob, worker.result)
            self.notify(f"Quantize job {job.record.job_id} started (pid {job.record.pid})")
        elif event.state == WorkerState.SUCCESS and worker.name == "cancel":
            result = cast(QuantizeProgress | None, worker.result)
            self.notify(f"Quantize job {result.phase.value if result else 'gone'}")
        elif event.state == WorkerState.ERROR:
            error = worker.error
            known = isinstance(error, QuantizeError | OSError)
            self._show_problem(str(error) if known else f"{type(error).__name__}: {error}")
            if self.has_class("-job") and worker.name == "start":
                self.remove_class("-job")  # show the form, where the problem line is

    def action_new_job(self) -> None:
        self.remove_class("-job")
        self.query_one("#model-dir", Input).focus()
        self.refresh_bindings()

    def action_close(self) -> None:
        if isinstance(self.focused, Input):
            self.set_focus(None)  # first Esc leaves the field: a stray Esc loses no typing
            return
        if len(self.app.screen_stack) > 1:
            self.dismiss()

    @on(Button.Pressed, "#create-profile")
    @on(Input.Submitted, "#profile-name")
    def create_profile(self) -> None:
        report = self.report
        if report is None:
            return
        settings = self.qtui.settings
        name = self.query_one("#profile-name", Input).value.strip()
        error = self.query_one("#job-error", Static)
        problem = profile_name_problem(name, set(settings.all_profiles()))
        problem = problem and f"profile name: {problem}"
        if problem is None:
            try:
                path = save_profile(settings, name, report.profile)
            except ConfigNotSaved as failure:
                problem = f"could not save the config: {failure}"
        if problem:
            error.update(Content(f"✖ {problem}"))
            error.add_class("shown")
            return
        error.remove_class("shown")
        self.query_one("#create-profile", Button).disabled = True
        self.qtui.use_profile(name)
        self.notify(f"Serve profile {name} saved to {path}")


def _sleep_unless_cancelled(seconds: float, worker: Worker[None]) -> None:
    deadline = time.monotonic() + seconds
    while not worker.is_cancelled:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.1, left))
