"""The quantize job: AutoRound W4A16 in a child process of the quantization Python.

AutoRound holds the GIL for minutes to hours, so it never runs in the panel:
qtui starts `QUANT_PYTHON backend/runners/autoround_job.py JOB_DIR` in its own
session (an SSH drop or a closed panel leaves it running), its output goes to
a log file, and a state file in the state dir lets any later qtui re-attach.
Progress is parsed from AutoRound's tqdm lines; the outcome is the runner's
result.json. When it succeeds, `finish()` runs the MTP doctor, patches if
needed and suggests a serve profile.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from backend import paths
from backend.atomic import write_json_atomic
from backend.config import ServeProfile, SpeculativeSettings
from backend.mtp_doctor import Verdict, diagnose_checkpoint
from backend.mtp_patch import PatchError, patch_checkpoint
from backend.process import Detached

RUNNER = Path(__file__).resolve().parent / "runners" / "autoround_job.py"
REPO_QUANT_PYTHON = Path(__file__).resolve().parent.parent / ".venv-quant" / "bin" / "python"
STATE_NAME = "quantize.json"
LOG_TAIL_BYTES = 256 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# `Quantizing model.layers.1:  25%|██▌       | 1/4 [00:04<00:13,  4.47s/it]`
_PROGRESS = re.compile(
    r"Quantizing (?P<block>\S+?):\s+\d+%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)"
    r"(?:\s*\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+))?"
)


@dataclass(frozen=True)
class Preset:
    iters: int
    nsamples: int
    seqlen: int


# The model card's recipes: default 200 iters x 128 samples, best 1000 iters;
# light is a quick check that the pipeline works, not a usable quantization.
PRESETS: dict[str, Preset] = {
    "default": Preset(iters=200, nsamples=128, seqlen=2048),
    "best": Preset(iters=1000, nsamples=512, seqlen=2048),
    "light": Preset(iters=8, nsamples=16, seqlen=512),
}


class QuantizeError(RuntimeError):
    """The job could not be started or controlled; one line with the fix."""


@dataclass
class JobSpec:
    model: str
    out: str
    preset: str = "default"
    iters: int = 200
    nsamples: int = 128
    seqlen: int = 2048
    dataset: str | None = None
    """A local .jsonl/.json file or a hub dataset name; None = AutoRound's default."""
    device: str = "cuda"
    torch_compile: bool = False

    @classmethod
    def from_preset(
        cls, model: str, out: str, preset: str = "default", **overrides: Any
    ) -> JobSpec:
        if preset not in PRESETS:
            raise QuantizeError(f"unknown preset {preset!r} (choose {', '.join(PRESETS)})")
        base = asdict(PRESETS[preset])
        base |= {key: value for key, value in overrides.items() if value is not None}
        return cls(model=model, out=out, preset=preset, **base)


class JobPhase(StrEnum):
    STARTING = "starting"
    CALIBRATING = "calibrating"
    QUANTIZING = "quantizing"
    SAVING = "saving"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobPhase.DONE, JobPhase.FAILED, JobPhase.CANCELLED)


@dataclass
class QuantizeProgress:
    """What a view shows: phase, blocks done of total, elapsed and ETA."""

    phase: JobPhase
    done_blocks: int = 0
    total_blocks: int | None = None
    block: str | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    last_line: str = ""
    error: str | None = None
    output_dir: str | None = None

    @property
    def fraction(self) -> float | None:
        if not self.total_blocks:
            return None
        return self.done_blocks / self.total_blocks


@dataclass
class JobRecord:
    """The state file: enough for any later qtui to find, watch and cancel the job."""

    job_id: str
    pid: int
    pgid: int
    create_time: float
    job_dir: str
    log_path: str
    spec: dict[str, Any]
    started_at: float
    quant_python: str
    cancel_requested: bool = False
    finished_at: float | None = None
    finish: dict[str, Any] | None = None


@dataclass
class FinishReport:
    output_dir: str
    verdict: str
    reason: str
    patch_actions: list[str] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)


def resolve_quant_python(configured: str | None = None) -> str:
    """settings.quant_python, else $QTUI_QUANT_PYTHON, else this checkout's .venv-quant."""
    for candidate in (configured, os.environ.get("QTUI_QUANT_PYTHON")):
        if candidate:
            return candidate
    if REPO_QUANT_PYTHON.exists():
        return str(REPO_QUANT_PYTHON)
    raise QuantizeError(
        "no quantization Python: set quant_python in the config or QTUI_QUANT_PYTHON "
        "(`make quant-env` builds .venv-quant with auto-round)"
    )


def clean(text: str) -> str:
    return _ANSI.sub("", text)


def _clock_seconds(value: str | None) -> float | None:
    if not value or "?" in value:
        return None
    seconds = 0.0
    for part in value.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def parse_progress(log_text: str) -> QuantizeProgress:
    """Progress from AutoRound's output (tqdm redraws with \\r, so split on both)."""
    text = clean(log_text)
    progress = QuantizeProgress(JobPhase.STARTING)
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    if lines:
        progress.last_line = lines[-1][-300:]
    if "calibration" in text.lower() or "caching" in text:
        progress.phase = JobPhase.CALIBRATING
    matches = list(_PROGRESS.finditer(text))
    if matches:
        last = matches[-1]
        progress.phase = JobPhase.QUANTIZING
        progress.done_blocks = int(last["done"])
        progress.total_blocks = int(last["total"])
        progress.block = None if last["block"] == "done" else last["block"]
        progress.eta_s = _clock_seconds(last["eta"])
        if progress.done_blocks >= progress.total_blocks:
            progress.phase = JobPhase.SAVING
            progress.eta_s = 0.0
    return progress


class QuantizeJob:
    """One AutoRound job; start it, or re-attach to the one the state file names."""

    def __init__(self, record: JobRecord, state_dir: Path, process: Detached | None = None):
        self.record = record
        self.state_dir = state_dir
        # Our own child when this job was started here, else the one the record names.
        self.process = process or Detached(record.pid, record.create_time, pgid=record.pgid)

    # --- lifecycle -----------------------------------------------------------------------

    @staticmethod
    def state_path(state_dir: Path | None = None) -> Path:
        return (state_dir or paths.state_dir()) / STATE_NAME

    @classmethod
    def current(cls, state_dir: Path | None = None) -> QuantizeJob | None:
        """The last job this machine ran (running or finished), or None."""
        state_dir = state_dir or paths.state_dir()
        try:
            data = json.loads(cls.state_path(state_dir).read_text())
            return cls(JobRecord(**data), state_dir)
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def start(
        cls, spec: JobSpec, quant_python: str | None = None, state_dir: Path | None = None
    ) -> QuantizeJob:
        state_dir = state_dir or paths.state_dir()
        existing = cls.current(state_dir)
        if existing is not None and existing.is_running():
            raise QuantizeError(
                f"a quantize job is already running (pid {existing.record.pid}); "
                "`qtui quantize --cancel` stops it"
            )
        if not Path(spec.model).exists():
            raise QuantizeError(f"model {spec.model}: no such directory")
        if (
            spec.dataset
            and spec.dataset.endswith((".json", ".jsonl"))
            and not Path(spec.dataset).is_file()
        ):
            raise QuantizeError(f"dataset {spec.dataset}: no such file")
        python = resolve_quant_python(quant_python)
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        job_dir = state_dir / "quantize" / job_id
        job_dir.mkdir(parents=True)
        spec_data = asdict(spec) | {
            "model": str(Path(spec.model).resolve()),
            "out": str(Path(spec.out).resolve()),
        }
        write_json_atomic(job_dir / "spec.json", spec_data)
        log_path = paths.logs_dir() / f"quantize-{job_id}.log"
        process = Detached.spawn(
            [python, str(RUNNER), str(job_dir)],
            log_path=log_path,
            env={"PYTHONUNBUFFERED": "1"},
            cwd=job_dir,
        )
        record = JobRecord(
            job_id=job_id,
            pid=process.pid,
            pgid=process.pgid,
            create_time=process.create_time,
            job_dir=str(job_dir),
            log_path=str(log_path),
            spec=spec_data,
            started_at=time.time(),
            quant_python=python,
        )
        job = cls(record, state_dir, process)
        job._save()
        return job

    def _save(self) -> None:
        path = self.state_path(self.state_dir)
        write_json_atomic(path, asdict(self.record))

    def is_running(self) -> bool:
        return self.process.alive()

    def result(self) -> dict[str, Any] | None:
        try:
            value = json.loads((Path(self.record.job_dir) / "result.json").read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> str:
        try:
            with open(self.record.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - limit))
                return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def progress(self) -> QuantizeProgress:
        progress = parse_progress(self.log_tail())
        end = self.record.finished_at or time.time()
        progress.elapsed_s = max(0.0, end - self.record.started_at)
        running = self.is_running()
        result = None if running else self.result()
        if result is not None:
            if result.get("ok"):
                progress.phase = JobPhase.DONE
                progress.output_dir = result.get("output_dir")
                progress.eta_s = 0.0
            elif result.get("cancelled") or self.record.cancel_requested:
                progress.phase = JobPhase.CANCELLED
            else:
                progress.phase = JobPhase.FAILED
                progress.error = result.get("error")
        elif not running:
            cancelled = self.record.cancel_requested
            progress.phase = JobPhase.CANCELLED if cancelled else JobPhase.FAILED
            if not cancelled:
                progress.error = f"the job exited without a result: {progress.last_line}"
        if progress.phase.finished and self.record.finished_at is None:
            self.record.finished_at = time.time()
            self._save()
        return progress

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.5) -> QuantizeProgress:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            progress = self.progress()
            if progress.phase.finished:
                return progress
            if deadline is not None and time.monotonic() > deadline:
                return progress
            time.sleep(poll_s)

    def cancel(self, grace_s: float = 20.0) -> QuantizeProgress:
        """SIGINT (AutoRound stops, the runner records it), then SIGKILL the whole group."""
        self.record.cancel_requested = True
        self._save()
        process = self.process
        if process.alive():
            process.signal_group(signal.SIGINT)
            deadline = time.monotonic() + grace_s
            while process.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
        if process.members():
            process.signal_group(signal.SIGKILL)  # stragglers: dataloader workers etc.
        process.wait_gone(10.0)
        return self.progress()

    # --- after a successful run ----------------------------------------------------------

    def finish(self) -> FinishReport:
        """Doctor, patch if fixable, suggest a serve profile; done once, remembered."""
        if self.record.finish is not None:
            return FinishReport(**self.record.finish)
        result = self.result()
        if not result or not result.get("ok"):
            raise QuantizeError("the job has not finished successfully")
        output = str(result["output_dir"])
        report = diagnose_checkpoint(Path(output))
        actions: list[str] = []
        if report.verdict is Verdict.FIXABLE:
            try:
                patched = patch_checkpoint(Path(output))
                actions = patched.actions
                report = patched.after or diagnose_checkpoint(Path(output))
            except PatchError as error:
                actions = [f"patch failed: {error}"]
        finish = FinishReport(
            output_dir=output,
            verdict=report.verdict.name.lower(),
            reason=report.reason,
            patch_actions=actions,
            profile=suggest_profile(output, report.verdict is Verdict.READY).model_dump(
                exclude_defaults=True
            ),
        )
        self.record.finish = asdict(finish)
        self._save()
        return finish


def suggest_profile(output_dir: str, mtp_ready: bool) -> ServeProfile:
    """A serve profile for the quantized checkpoint: MTP on when the doctor says it will work."""
    speculative = SpeculativeSettings(method="mtp" if mtp_ready else "off")
    return ServeProfile(
        model=output_dir, served_model_name=Path(output_dir).name, speculative=speculative
    )
