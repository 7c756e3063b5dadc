"""The quantize job with real AutoRound on CPU: progress to completion, then a clean cancel."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from backend.quantize import JobPhase, JobSpec, QuantizeError, QuantizeJob, parse_progress
from backend.tiny_qwen35 import TinyQwen35Shape, build_tiny_qwen35, write_calibration_jsonl
from tui.cli import main as qtui

FOUR_BLOCKS = TinyQwen35Shape(num_hidden_layers=4)
"""Four blocks to quantize, so progress has a middle to be seen in."""


@pytest.fixture(scope="module")
def model_and_calib(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("quantize-job")
    model = build_tiny_qwen35(base / "tiny-qwen35", FOUR_BLOCKS)
    return model, write_calibration_jsonl(base / "calib.jsonl", samples=16)


def _spec(model: Path, calib: Path, out: Path, iters: int = 2) -> JobSpec:
    return JobSpec.from_preset(
        str(model), str(out), "light",
        iters=iters, nsamples=8, seqlen=32, dataset=str(calib), device="cpu",
    )  # fmt: skip


def test_progress_parser_reads_autoround_lines() -> None:
    log = (
        "\x1b[38;20m2026 INFO caching done\x1b[0m\n"
        "Quantizing model.layers.0:   0%|          | 0/4 [00:00<?, ?it/s]\r"
        "Quantizing model.layers.1:  25%|██▌       | 1/4 [00:04<00:13,  4.47s/it]"
    )
    progress = parse_progress(log)
    assert progress.phase is JobPhase.QUANTIZING
    assert (progress.done_blocks, progress.total_blocks) == (1, 4)
    assert progress.block == "model.layers.1" and progress.eta_s == 13


@pytest.mark.quant
def test_job_runs_to_completion_with_progress(
    model_and_calib: tuple[Path, Path], tmp_path: Path
) -> None:
    model, calib = model_and_calib
    job = QuantizeJob.start(_spec(model, calib, tmp_path / "out"))
    with pytest.raises(QuantizeError, match="already running"):
        QuantizeJob.start(_spec(model, calib, tmp_path / "out2"))
    seen: list[tuple[str, int, int | None]] = []
    while True:
        progress = job.progress()
        seen.append((progress.phase.value, progress.done_blocks, progress.total_blocks))
        if progress.phase.finished:
            break
        assert progress.elapsed_s < 400, job.log_tail()[-2000:]
        job.wait(timeout_s=0.3, poll_s=0.1)
    assert progress.phase is JobPhase.DONE, f"{progress.error}\n{job.log_tail()[-3000:]}"
    assert any(total == 4 and 0 < done < 4 for _, done, total in seen), seen
    assert progress.done_blocks == progress.total_blocks == 4
    # A later qtui re-attaches through the state file, then the doctor + patch run once.
    again = QuantizeJob.current()
    assert again is not None and again.record.job_id == job.record.job_id
    finish = again.finish()
    assert finish.verdict == "ready", finish.reason
    assert finish.profile["speculative"]["method"] == "mtp"
    assert qtui(["mtp", "inspect", finish.output_dir]) == 0
    assert qtui(["quantize", "--status"]) == 0


@pytest.mark.quant
def test_cancel_leaves_no_process(model_and_calib: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = model_and_calib
    # Enough iterations to tune for minutes: the cancel must land mid-job even when
    # a loaded machine reports the tuning phase late (200 iterations once finished first).
    job = QuantizeJob.start(_spec(model, calib, tmp_path / "out", iters=20_000))
    try:
        # Cancel once AutoRound is really working (the tuning loop), not while it imports.
        while job.progress().phase not in (JobPhase.QUANTIZING, JobPhase.CALIBRATING):
            assert job.is_running(), job.log_tail()[-2000:]
            job.wait(timeout_s=0.5, poll_s=0.1)
        pgid = job.record.pgid
        attached = QuantizeJob.current()  # cancel from a re-attached view, as a later qtui would
        assert attached is not None
        progress = attached.cancel()
        job.wait(timeout_s=10)
    finally:
        if job.is_running():
            job.cancel()
    assert progress.phase is JobPhase.CANCELLED
    assert not job.is_running()
    leftovers = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == pgid]
    alive = [p for p in leftovers if p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*/config.json"))


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
