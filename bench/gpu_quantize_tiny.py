"""One quantize job of a tiny Qwen3.5 (H 256, with MTP) on CUDA, through QuantizeJob.

Run on the GPU machine with a Python that has auto-round (QTUI_QUANT_PYTHON):
    QTUI_QUANT_PYTHON=python3 python3 bench/gpu_quantize_tiny.py /tmp/gpu-quant
Prints progress lines, the wall time of the job and the doctor's verdict.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.quantize import JobSpec, QuantizeJob
from backend.tiny_qwen35 import TinyQwen35Shape, build_tiny_qwen35, write_calibration_jsonl


def main(work: Path) -> int:
    shape = TinyQwen35Shape(hidden_size=256, intermediate_size=512)
    model = build_tiny_qwen35(work / "tiny-qwen35-h256", shape)
    calib = write_calibration_jsonl(work / "calib.jsonl", samples=64)
    spec = JobSpec.from_preset(
        str(model), str(work / "out"), "light",
        iters=50, nsamples=32, seqlen=64, dataset=str(calib), device="cuda",
    )  # fmt: skip
    started = time.monotonic()
    job = QuantizeJob.start(spec, state_dir=work / "state")
    last = ""
    while not (progress := job.progress()).phase.finished:
        line = (
            f"{progress.phase} {progress.done_blocks}/{progress.total_blocks} eta={progress.eta_s}"
        )
        if line != last:
            print(f"{time.monotonic() - started:6.1f}s {line}", flush=True)
            last = line
        time.sleep(0.25)
    wall = time.monotonic() - started
    print(f"job {progress.phase} in {wall:.1f} s; result {job.result()}; log {job.record.log_path}")
    if progress.phase != "done":
        print(job.log_tail()[-4000:])
        return 1
    finish = job.finish()
    print(f"doctor: {finish.verdict}: {finish.reason}; patched: {finish.patch_actions}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpu-quant")))
