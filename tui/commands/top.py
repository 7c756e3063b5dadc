"""`qtui top`: the live telemetry without the panel, one line per interval.

Figures are windowed (default 10 s), not lifetime averages: the first line
comes after one interval, from two scrapes. `--json` prints one object per line
(`telemetry`, `gpu`) for scripts; `--count N` stops after N lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from backend.gpu import GpuSample, GpuSampler, no_gpu_text
from backend.metrics import MetricsScraper, TelemetrySnapshot
from backend.telemetry_checks import scraper_for
from tui.commands.common import supervisor
from tui.commands.errors import CommandError

GIB = 1 << 30


def register(subparsers: Any) -> None:
    top = subparsers.add_parser("top", help="live tok/s, acceptance, KV use and GPU memory")
    top.add_argument("--url", help="server base URL (default: the server qtui runs)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between lines (1)")
    top.add_argument("--window", type=float, default=10.0, help="seconds the rates span (10)")
    top.add_argument("--count", type=int, help="stop after this many lines")
    top.add_argument("--json", action="store_true", help="one JSON object per line")
    top.set_defaults(handler=cmd_top)


def _percent(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_line(snap: TelemetrySnapshot, gpu: GpuSample | None) -> str:
    """One human line: every windowed figure, then GPU memory."""
    parts = [time.strftime("%H:%M:%S")]
    if snap.stale:
        parts.append(f"STALE ({snap.error}); last:")
    parts.append(f"gen {_rate(snap.generation_tps)} tok/s")
    parts.append(f"prompt {_rate(snap.prompt_tps)}")
    parts.append(f"run {_or_dash(snap.running)} wait {_or_dash(snap.waiting)}")
    parts.append(f"kv {_percent(snap.kv_cache_usage, 1)}")
    parts.append(f"prefix {_percent(snap.prefix_cache_hit_rate)}")
    parts.append(f"ttft {_ms(snap.ttft_mean_s)} itl {_ms(snap.itl_mean_s)}")
    if snap.spec_decode:
        length = (
            "-" if snap.mean_acceptance_length is None else f"{snap.mean_acceptance_length:.2f}"
        )
        positions = " ".join(f"{p:.2f}" for p in snap.per_position_acceptance)
        parts.append(f"accept {_percent(snap.acceptance_rate, 1)} len {length} [{positions}]")
    if gpu is not None:
        if not gpu.has_gpu:
            parts.append(no_gpu_text(gpu.no_gpu_reason or "NVML unavailable"))
        for reading in gpu.gpus:
            parts.append(
                f"gpu{reading.index} {reading.memory_used / GIB:.1f}/"
                f"{reading.memory_total / GIB:.0f}G"
            )
    return "  ".join(parts)


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _target(args: argparse.Namespace) -> tuple[MetricsScraper, int | None]:
    """The scraper (with checks when qtui launched the server) and the server's pgid."""
    if args.url:
        return MetricsScraper(args.url, window_s=args.window), None
    status = supervisor().status()
    if status.record is None or not status.phase.is_up:
        raise CommandError("no server is running: start one with `qtui serve start`, or pass --url")
    return scraper_for(status.record, window_s=args.window), status.record.pgid


def cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise CommandError("--interval must be positive", exit_code=2)
    scraper, pgid = _target(args)
    sampler = GpuSampler(pgid=pgid)
    shown_warnings: set[str] = set()
    try:
        scraper.scrape()  # the window's first point
        printed = 0
        while args.count is None or printed < args.count:
            time.sleep(args.interval)
            snap, gpu = scraper.scrape(), sampler.sample()
            if args.json:
                print(json.dumps({"telemetry": snap.to_json(), "gpu": gpu.to_json()}), flush=True)
            else:
                print(format_line(snap, gpu), flush=True)
                for warning in snap.warnings:
                    if warning not in shown_warnings:
                        shown_warnings.add(warning)
                        print(f"qtui: warning: {warning}", file=sys.stderr, flush=True)
            printed += 1
    finally:
        sampler.close()
        scraper.close()
    return 0
