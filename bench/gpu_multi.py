"""Many GPUs, for real: qtui's GpuSampler and TelemetryPanel on every GPU of the lent machine.

No vLLM needed. A child in its own session (standing for a tensor-parallel
server's process group) holds memory on every visible GPU with torch and keeps
them busy with matmuls; qtui's sampler watches that group and the panel renders
the sample headlessly. Run on the device from the repo root, with the panel's
wheels unpacked on PYTHONPATH (textual, rich, psutil, nvidia-ml-py; see the
README's "GPU lane" section). Here, once: the wheels for CPython 3.12 into an
ignored folder, carried by the device call (2.7 MB):

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 -d .gpu-lane/multi-wheels textual==8.2.8 rich==15.0.0 \
        markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0 typing_extensions==4.16.0 \
        platformdirs==4.14.9 psutil==7.2.2 nvidia-ml-py==13.615.71

There (carry [".gpu-lane/multi-wheels"]), the wheels unzipped, no pip needed:

    python3 -c "import glob, zipfile; [zipfile.ZipFile(w).extractall('/tmp/ms')
        for w in glob.glob('.gpu-lane/multi-wheels/*.whl')]"
    PYTHONPATH=/tmp/ms python3 bench/gpu_multi.py --out "$OUT"

Prints every GPU's figures, NVML's own process list (to see whether its PIDs
are ours or the host's), the server's memory per GPU and summed, and the panel's
text; writes OUT/gpu_multi.json, OUT/panel.txt and OUT/panel.svg.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from textual.app import App, ComposeResult  # noqa: E402
from textual.widgets import Static  # noqa: E402

from backend.gpu import (  # noqa: E402
    GpuSample,
    GpuSampler,
    Nvml,
    NvmlCallError,
    NvmlUnavailable,
    gpu_summary,
)
from tui.widgets.telemetry import TelemetryPanel  # noqa: E402

GIB = 1 << 30

# GPU i gets `gib + i` GiB, so each row's figure says which GPU it came from.
CHILD = """
import sys, time, torch
gib, seconds = int(sys.argv[1]), float(sys.argv[2])
count = torch.cuda.device_count()
held = [torch.empty((gib + i) << 30, dtype=torch.uint8, device=f"cuda:{i}") for i in range(count)]
mats = [torch.randn(4096, 4096, device=f"cuda:{i}") for i in range(count)]
for i in range(count):
    torch.cuda.synchronize(i)
print(f"ready {count}", flush=True)
end = time.time() + seconds
while time.time() < end:
    for m in mats:
        m @ m
    for i in range(count):
        torch.cuda.synchronize(i)
"""


class PanelHost(App[None]):
    def compose(self) -> ComposeResult:
        yield TelemetryPanel(id="panel")


async def render_panel(sample: GpuSample, out: Path) -> dict[str, str]:
    """The panel as the App shows it: each Static's text, and an SVG of the screen."""
    app = PanelHost()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(TelemetryPanel)
        panel.update_gpu(sample)
        await pilot.pause()
        texts = {
            f"#{static.id}": str(static.render())
            for static in panel.query(Static)
            if static.id and static.display
        }
        (out / "panel.svg").write_text(app.export_screenshot(title="qtui telemetry, 2 GPUs"))
    return texts


def nvml_processes() -> dict[int, list[tuple[int, int | None]]]:
    """NVML's own (pid, bytes) per GPU, read through qtui's boundary class."""
    nvml = Nvml()
    nvml.init()
    try:
        return {i: nvml.processes(nvml.handle(i)) for i in range(nvml.device_count())}
    finally:
        nvml.shutdown()


def nvidia_smi() -> str:
    """nvidia-smi's view at the same moment, to check qtui's figures against."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi: not installed"
    queries = (
        ["--query-gpu=index,memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw"],
        ["--query-compute-apps=gpu_bus_id,pid,used_memory"],
    )
    return "\n".join(
        subprocess.run(
            ["nvidia-smi", *query, "--format=csv"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        for query in queries
    )


def describe(sample: GpuSample) -> list[str]:
    lines = []
    for g in sample.gpus:
        lines.append(
            f"GPU {g.index} {g.name}: {g.memory_used / GIB:.2f}/{g.memory_total / GIB:.2f} GiB, "
            f"util {g.utilization}%, {g.temperature_c} C, {g.power_w} W "
            f"(limit {g.power_limit_w} W); server holds {g.server_memory / GIB:.3f} GiB"
        )
    held = sample.server_memory
    lines.append(
        f"server pids {sample.server_pids}: "
        + ("unknown" if held is None else f"{held / GIB:.3f} GiB summed over GPUs")
        + (f" ({sample.server_memory_note})" if sample.server_memory_note else "")
    )
    lines.append(
        f"per pid: { {p: round(b / GIB, 3) for p, b in sample.server_gpu_memory.items()} }"
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    parser.add_argument("--gib", type=int, default=2, help="GiB held on GPU 0 (+1 per GPU after)")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the child runs")
    parser.add_argument("--samples", type=int, default=4, help="samples 1 s apart; the last counts")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}

    # The child must not see the panel's wheels (its torch brings its own typing_extensions).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(args.gib), str(args.seconds)],
        start_new_session=True,
        stdout=subprocess.PIPE,
        env=env,
    )
    sampler = GpuSampler()
    try:
        assert child.stdout is not None
        ready = child.stdout.readline().decode().strip()
        print(f"child pid {child.pid} (its own group): {ready or 'no ready line'}", flush=True)
        result["child"] = {"pid": child.pid, "ready": ready}
        sampler.watch(child.pid)
        sample = sampler.sample()
        for _ in range(args.samples - 1):
            time.sleep(1.0)
            sample = sampler.sample()
        try:
            processes = nvml_processes()
        except (NvmlCallError, NvmlUnavailable) as error:
            processes = {}
            print(f"NVML process list: {error}")
        result["nvml_processes"] = {str(i): p for i, p in processes.items()}
        result["child_pid_listed_by_nvml"] = any(
            pid == child.pid for entries in processes.values() for pid, _ in entries
        )
        result["nvidia_smi"] = nvidia_smi()
        print(result["nvidia_smi"])
        result["sample"] = sample.to_json()
        result["summary"] = gpu_summary(sample)
        print("\n".join(describe(sample)))
        print(f"NVML processes per GPU (pid, bytes): {processes}")
        print(f"child pid {child.pid} listed by NVML: {result['child_pid_listed_by_nvml']}")
        texts = asyncio.run(render_panel(sample, args.out))
        result["panel"] = texts
        panel_text = "\n".join(f"{sel}:\n{text}" for sel, text in texts.items())
        (args.out / "panel.txt").write_text(panel_text + "\n")
        print("---- panel ----\n" + panel_text)
    finally:
        sampler.close()
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=30)
        (args.out / "gpu_multi.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
