"""The Quantize screen's form and job lines, without widgets.

Each text field is described once (id, label, where a job record keeps it,
its check); the screen builds its controls and validators from that, reads
the form back through `read_form`, and refills it from a re-attached job
through `form_values_from`. The lines of the job panel are made here too, so
all of it is tested without an App.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from backend.gpu import GpuSample, no_gpu_text
from backend.quantize import PRESETS, FinishReport, JobSpec, QuantizeProgress

DEVICES = ("cuda", "cpu")
GIB = 1 << 30


def form_path(text: str) -> Path:
    """A path as typed: surrounding spaces dropped, `~` expanded."""
    return Path(os.path.expanduser(text.strip()))


# -- checks: each returns a one-line problem, or None -----------------------------------
def model_dir_problem(text: str) -> str | None:
    if not text.strip():
        return "model dir: give the checkpoint directory to quantize"
    path = form_path(text)
    if not path.exists():
        return f"model dir: {path} does not exist"
    if not path.is_dir():
        return f"model dir: {path} is not a directory"
    if not (path / "config.json").is_file():
        return f"model dir: no config.json in {path} (not a Hugging Face checkpoint)"
    return None


def output_dir_problem(text: str, model_text: str = "") -> str | None:
    if not text.strip():
        return None  # the default next to the model is used
    path = form_path(text)
    if path.exists() and not path.is_dir():
        return f"output dir: {path} is a file"
    if model_text.strip() and path.resolve() == form_path(model_text).resolve():
        return "output dir: must differ from the model dir (the model would be overwritten)"
    return None


def count_problem(text: str, label: str) -> str | None:
    if not text.strip():
        return None  # the preset's value is used
    try:
        value = int(text)
    except ValueError:
        return f"{label}: a whole number, or empty for the preset's"
    return None if value >= 1 else f"{label}: must be at least 1"


def dataset_problem(text: str) -> str | None:
    if not text.strip():
        return None  # AutoRound's default calibration set
    path = form_path(text)
    if text.strip().endswith((".json", ".jsonl")) and not path.is_file():
        return f"dataset: {path} is not a file"
    if path.is_dir():
        return f"dataset: {path} is a directory; give a .jsonl/.json file or a hub name"
    return None


def default_output_dir(model_text: str) -> str:
    if not model_text.strip():
        return ""
    model = form_path(model_text)
    return str(model.parent / f"{model.name}-w4a16")


# -- the text fields ----------------------------------------------------------------------
@dataclass(frozen=True)
class TextField:
    """One text control of the form."""

    id: str
    """The control's id."""
    label: str
    spec_key: str
    """Its key in a job record's spec (a re-attached job refills the form from it)."""
    placeholder: str = ""
    """Counts show the preset's value instead (it changes with the preset)."""
    count: bool = False
    """A whole number that overrides the preset's; empty keeps the preset's."""


TEXT_FIELDS: tuple[TextField, ...] = (
    TextField("model-dir", "Model dir", "model", "checkpoint directory (has config.json)"),
    TextField("output-dir", "Output dir", "out", "next to the model"),
    TextField("iters", "Iters", "iters", count=True),
    TextField("nsamples", "Samples", "nsamples", count=True),
    TextField("seqlen", "Seq len", "seqlen", count=True),
    TextField("dataset", "Dataset", "dataset", "optional: .jsonl/.json file or hub name"),
)
FIELDS: dict[str, TextField] = {field.id: field for field in TEXT_FIELDS}
COUNT_FIELDS: tuple[TextField, ...] = tuple(field for field in TEXT_FIELDS if field.count)


def count_placeholders(preset_name: str) -> dict[str, str]:
    """What each empty count field means under this preset, by field id."""
    preset = asdict(PRESETS.get(preset_name, PRESETS["default"]))
    return {field.id: f"{preset[field.spec_key]} (preset)" for field in COUNT_FIELDS}


def field_problem(field_id: str, text: str, model_text: str = "") -> str | None:
    """The check of one text field; the output dir is checked against `model_text`."""
    if field_id == "model-dir":
        return model_dir_problem(text)
    if field_id == "output-dir":
        return output_dir_problem(text, model_text)
    if field_id == "dataset":
        return dataset_problem(text)
    return count_problem(text, FIELDS[field_id].label)


@dataclass
class FormReading:
    """The job spec the form describes, or its first problem and the field it is in."""

    spec: JobSpec | None
    problem: str | None
    field_id: str | None


def read_form(texts: Mapping[str, str], preset: str, device: str) -> FormReading:
    """The job spec from the text fields' values (by id), the preset and the device."""
    values = {field.id: texts.get(field.id, "").strip() for field in TEXT_FIELDS}
    model = values["model-dir"]
    for field in TEXT_FIELDS:
        problem = field_problem(field.id, values[field.id], model)
        if problem:
            return FormReading(None, problem, field.id)
    counts = {field.spec_key: int(values[field.id]) if values[field.id] else None
              for field in COUNT_FIELDS}  # fmt: skip
    spec = JobSpec.from_preset(
        str(form_path(model)),
        str(form_path(values["output-dir"] or default_output_dir(model))),
        preset,
        **counts,
        dataset=str(form_path(values["dataset"])) if values["dataset"] else None,
        device=device,
    )
    return FormReading(spec, None, None)


def form_values_from(spec: Mapping[str, object]) -> dict[str, str]:
    """A job record's spec as text field values, by id; what it does not hold is left out."""
    found = {field.id: spec.get(field.spec_key) for field in TEXT_FIELDS}
    return {field_id: str(value) for field_id, value in found.items() if value is not None}


def suggest_profile_name(output_dir: str, taken: set[str]) -> str:
    """A free profile name after the output directory's name."""
    base = re.sub(r"[^A-Za-z0-9._-]", "-", Path(output_dir).name).strip("-._") or "quantized"
    name, number = base, 2
    while name in taken:
        name, number = f"{base}-{number}", number + 1
    return name


# -- the job panel's lines ------------------------------------------------------------------
def preset_label(name: str) -> str:
    preset = PRESETS[name]
    return f"{name}: {preset.iters} iters, {preset.nsamples} samples, seqlen {preset.seqlen}"


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(progress: QuantizeProgress) -> str:
    parts = [progress.phase.value]
    if progress.total_blocks:
        parts.append(f"block {progress.done_blocks}/{progress.total_blocks}")
    if progress.block and not progress.phase.finished:
        parts.append(progress.block)
    parts.append(f"elapsed {clock(progress.elapsed_s)}")
    if not progress.phase.finished:
        parts.append(f"ETA {clock(progress.eta_s)}")
    return "   ".join(parts)


def gpu_line(sample: GpuSample | None) -> str:
    if sample is None:
        return "GPU: …"
    if not sample.has_gpu:
        return no_gpu_text(sample.no_gpu_reason or "unknown")
    parts = []
    for gpu in sample.gpus:
        text = f"GPU{gpu.index} {gpu.memory_used / GIB:.1f}/{gpu.memory_total / GIB:.1f} GiB"
        if gpu.server_memory:
            text += f" (job {gpu.server_memory / GIB:.1f})"
        parts.append(text)
    return "   ".join(parts)


def finish_text(report: FinishReport) -> str:
    lines = [f"✔ quantized → {report.output_dir}"]
    lines.append(f"MTP doctor: {report.verdict}: {report.reason}")
    if report.patch_actions:
        lines.append("patched: " + "; ".join(report.patch_actions))
    else:
        lines.append("not patched: nothing to fix")
    return "\n".join(lines)
