"""The Quantize screen, headless, on a real GPU: real NVML, a CUDA AutoRound job, the GPU line.

Run on the GPU machine (Python with torch + auto-round as QTUI_QUANT_PYTHON, and
textual importable for the panel side):
    QTUI_QUANT_PYTHON=python3 python3 bench/gpu_quantize_screen.py OUT_DIR
Fills the form by keys (the device must default to cuda because the sampler
sees a GPU), starts the job, records the screen's GPU line every poll (the
job's own GPU memory comes from NVML's per-process accounting of the job's
process group), prints the job time and the doctor's verdict, and saves
screenshots of the running and finished screen into OUT_DIR.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORK = Path(tempfile.mkdtemp(prefix="qtui-gpu-screen-"))
os.environ.setdefault("QTUI_CONFIG", str(WORK / "config.toml"))
os.environ.setdefault("QTUI_STATE_DIR", str(WORK / "state"))

from textual.widgets import Input, Select, Static  # noqa: E402

from backend.config import Settings  # noqa: E402
from backend.quantize import JobPhase  # noqa: E402
from backend.supervisor import ServerSupervisor  # noqa: E402
from backend.tiny_qwen35 import (  # noqa: E402
    TinyQwen35Shape,
    build_tiny_qwen35,
    write_calibration_jsonl,
)
from tui.app import make_app  # noqa: E402
from tui.screens.quantize import QuantizeScreen  # noqa: E402


async def run(out: Path) -> int:
    shape = TinyQwen35Shape(hidden_size=256, intermediate_size=512)
    model = build_tiny_qwen35(WORK / "tiny-qwen35-h256", shape)
    calib = write_calibration_jsonl(WORK / "calib.jsonl", samples=64)
    app = make_app(
        settings=Settings(),
        supervisor=ServerSupervisor(None, state_dir=WORK / "server-state"),
        poll_interval_s=0.5,
    )
    async with app.run_test(size=(160, 50)) as pilot:
        screen = QuantizeScreen()
        await app.push_screen(screen)
        for field_id, text in (("model-dir", str(model)), ("output-dir", str(WORK / "out")),
                               ("iters", "50"), ("nsamples", "32"), ("seqlen", "64"),
                               ("dataset", str(calib))):  # fmt: skip
            screen.query_one(f"#{field_id}", Input).focus()
            await pilot.press(*text)
        await asyncio.sleep(2)  # the first GPU sample picks the device
        device = screen.query_one("#device", Select).value
        print(f"device chosen by the screen: {device}", flush=True)
        started = time.monotonic()
        await pilot.press("ctrl+s")
        lines: list[str] = []
        last_key = ""
        shot = False
        while screen.report is None and screen.phase not in (JobPhase.FAILED, JobPhase.CANCELLED):
            await asyncio.sleep(0.5)
            gpu = str(screen.query_one("#job-gpu", Static).render())
            phase = str(screen.query_one("#job-phase", Static).render())
            line = f"{time.monotonic() - started:6.1f}s  {phase}  |  {gpu}"
            key = f"{screen.phase} {phase.split('elapsed')[0]} {gpu}"
            if key != last_key:
                print(line, flush=True)
                last_key = key
            lines.append(line)
            if screen.phase is JobPhase.QUANTIZING and "(job" in gpu and not shot:
                shot = True
                app.save_screenshot(str(out / "quantize-running-160x50.svg"))
            if time.monotonic() - started > 500:
                print("timed out", flush=True)
                return 1
        wall = time.monotonic() - started
        await pilot.pause(1.0)
        app.save_screenshot(str(out / "quantize-done-160x50.svg"))
        result = str(screen.query_one("#job-result", Static).render())
        error = str(screen.query_one("#job-error", Static).render())
        print(f"job {screen.phase} in {wall:.1f} s (screen-measured)\n{result}\n{error}")
        print(f"GPU line showed the job's memory: {any('(job' in line for line in lines)}")
    return 0 if device == "cuda" and screen.phase is JobPhase.DONE else 1


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else WORK / "shots")
    target.mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(run(target)))
