"""The Quantize screen's form without widgets: checks, reading into a JobSpec, job lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.gpu import GpuReading, GpuSample
from backend.quantize import PRESETS, FinishReport, JobPhase, QuantizeProgress
from tui.quantize_form import (
    TEXT_FIELDS,
    clock,
    count_placeholders,
    count_problem,
    dataset_problem,
    default_output_dir,
    field_problem,
    finish_text,
    form_values_from,
    gpu_line,
    model_dir_problem,
    output_dir_problem,
    preset_label,
    progress_line,
    read_form,
    suggest_profile_name,
)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "tiny"
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_model_dir_needs_a_checkpoint_directory(tmp_path: Path, model: Path) -> None:
    assert "give the checkpoint" in (model_dir_problem("  ") or "")
    assert "does not exist" in (model_dir_problem(str(tmp_path / "missing")) or "")
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in (model_dir_problem(str(tmp_path / "file")) or "")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in (model_dir_problem(str(tmp_path / "empty")) or "")
    assert model_dir_problem(f"  {model}  ") is None


def test_output_dir_is_optional_but_never_the_model(tmp_path: Path, model: Path) -> None:
    assert output_dir_problem("", str(model)) is None
    assert output_dir_problem(str(tmp_path / "new"), str(model)) is None
    (tmp_path / "file").write_text("x")
    assert "is a file" in (output_dir_problem(str(tmp_path / "file")) or "")
    assert "must differ" in (output_dir_problem(str(model / "." / ""), str(model)) or "")
    assert default_output_dir(str(model)) == str(model.parent / "tiny-w4a16")
    assert default_output_dir(" ") == ""


def test_counts_and_dataset(tmp_path: Path) -> None:
    assert count_problem("", "Iters") is None
    assert count_problem("3", "Iters") is None
    assert count_problem("0", "Iters") == "Iters: must be at least 1"
    assert count_problem("x", "Seq len") == "Seq len: a whole number, or empty for the preset's"
    assert dataset_problem("") is None
    assert dataset_problem("NeelNanda/pile-10k") is None  # a hub name
    assert "is not a file" in (dataset_problem(str(tmp_path / "calib.jsonl")) or "")
    assert "is a directory" in (dataset_problem(str(tmp_path)) or "")
    (tmp_path / "calib.jsonl").write_text("{}\n")
    assert dataset_problem(str(tmp_path / "calib.jsonl")) is None


def test_every_field_has_its_check() -> None:
    labels = {field.id: field.label for field in TEXT_FIELDS}
    assert field_problem("nsamples", "0") == f"{labels['nsamples']}: must be at least 1"
    assert field_problem("model-dir", "") == model_dir_problem("")
    assert field_problem("dataset", "/") == dataset_problem("/")
    assert field_problem("output-dir", "/tmp", "/tmp") == output_dir_problem("/tmp", "/tmp")


def test_read_form_gives_the_spec_or_the_first_problem(tmp_path: Path, model: Path) -> None:
    texts = {"model-dir": f" {model} ", "iters": "0", "dataset": str(tmp_path)}
    reading = read_form(texts, "light", "cpu")
    assert reading.spec is None and reading.field_id == "iters"  # in the form's order
    assert reading.problem == "Iters: must be at least 1"

    texts = {"model-dir": str(model), "iters": " 5 ", "seqlen": "32"}
    reading = read_form(texts, "light", "cpu")
    assert reading.problem is None and reading.spec is not None
    spec = reading.spec
    assert (spec.model, spec.out) == (str(model), str(model.parent / "tiny-w4a16"))
    light = PRESETS["light"]
    assert (spec.preset, spec.iters, spec.nsamples, spec.seqlen) == ("light", 5, light.nsamples, 32)
    assert spec.dataset is None and spec.device == "cpu"


def test_a_job_spec_refills_the_form_it_came_from(tmp_path: Path, model: Path) -> None:
    calib = tmp_path / "calib.jsonl"
    calib.write_text("{}\n")
    texts = {"model-dir": str(model), "output-dir": str(tmp_path / "out"),
             "nsamples": "8", "dataset": str(calib)}  # fmt: skip
    spec = read_form(texts, "best", "cuda").spec
    assert spec is not None
    record = {"model": spec.model, "out": spec.out, "preset": spec.preset,
              "iters": spec.iters, "nsamples": spec.nsamples, "seqlen": spec.seqlen,
              "dataset": spec.dataset, "device": spec.device}  # fmt: skip
    refilled = form_values_from(record)
    assert read_form(refilled, "best", "cuda").spec == spec
    assert form_values_from({"model": "/m", "dataset": None}) == {"model-dir": "/m"}


def test_preset_placeholders_and_labels() -> None:
    light = PRESETS["light"]
    assert count_placeholders("light") == {
        "iters": f"{light.iters} (preset)",
        "nsamples": f"{light.nsamples} (preset)",
        "seqlen": f"{light.seqlen} (preset)",
    }
    assert count_placeholders("no-such") == count_placeholders("default")
    assert preset_label("light").startswith(f"light: {light.iters} iters, ")


def test_profile_name_suggestion_is_free_and_valid() -> None:
    assert suggest_profile_name("/out/tiny w4a16!", set()) == "tiny-w4a16"
    assert suggest_profile_name("/out/tiny", {"tiny", "tiny-2"}) == "tiny-3"
    assert suggest_profile_name("/out/...", set()) == "quantized"


def test_job_lines() -> None:
    assert (clock(None), clock(65), clock(3725)) == ("-", "1:05", "1:02:05")
    running = QuantizeProgress(
        JobPhase.QUANTIZING, done_blocks=1, total_blocks=4, block="model.layers.1",
        elapsed_s=61, eta_s=183,
    )  # fmt: skip
    assert progress_line(running) == (
        "quantizing   block 1/4   model.layers.1   elapsed 1:01   ETA 3:03"
    )
    done = QuantizeProgress(JobPhase.DONE, done_blocks=4, total_blocks=4, block="x", elapsed_s=9)
    assert progress_line(done) == "done   block 4/4   elapsed 0:09"
    report = FinishReport("/out/tiny-w4a16", "ready", "mtp.* tensors present")
    assert finish_text(report).splitlines() == [
        "✔ quantized → /out/tiny-w4a16",
        "MTP doctor: ready: mtp.* tensors present",
        "not patched: nothing to fix",
    ]
    patched = FinishReport("/o", "ready", "r", patch_actions=["a", "b"])
    assert finish_text(patched).splitlines()[-1] == "patched: a; b"
    assert gpu_line(None) == "GPU: …"
    assert gpu_line(GpuSample(at=0, no_gpu_reason="no driver")) == "no NVIDIA GPU (no driver)"
    gib = 1 << 30
    gpus = [GpuReading(0, "H200", 10 * gib, 140 * gib, server_memory=4 * gib),
            GpuReading(1, "H200", 1 * gib, 140 * gib)]  # fmt: skip
    assert gpu_line(GpuSample(at=0, gpus=gpus)) == (
        "GPU0 10.0/140.0 GiB (job 4.0)   GPU1 1.0/140.0 GiB"
    )
