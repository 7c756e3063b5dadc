"""`qtui quantize MODEL --out DIR`: AutoRound W4A16 as a background job qtui can re-attach to.

`--status`, `--attach` and `--cancel` act on the job this machine last started;
Ctrl-C while following only detaches (the job keeps running, like the server).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

import tomli_w

from backend.quantize import (
    PRESETS,
    JobPhase,
    JobSpec,
    QuantizeError,
    QuantizeJob,
    QuantizeProgress,
)
from tui.commands.common import settings
from tui.commands.errors import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "quantize", help="quantize a model with AutoRound (W4A16, group 128, sym)"
    )
    parser.add_argument("model", nargs="?", help="model directory to quantize")
    parser.add_argument("--out", help="output directory (AutoRound writes OUT/<name>-w4g128/)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument(
        "--iters", type=int, help="tuning iterations per block (preset's if omitted)"
    )
    parser.add_argument("--nsamples", type=int, help="calibration samples")
    parser.add_argument("--seqlen", type=int, help="calibration sequence length")
    parser.add_argument("--dataset", help="calibration data: a local .jsonl/.json file or hub name")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--detach", action="store_true", help="start and return at once")
    parser.add_argument("--status", action="store_true", help="show the current/last job")
    parser.add_argument("--attach", action="store_true", help="follow the running job")
    parser.add_argument("--cancel", action="store_true", help="stop the running job")
    parser.add_argument("--json", action="store_true", help="--status as one JSON object")
    parser.set_defaults(handler=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    if args.status:
        return _status(args.json)
    if args.cancel:
        return _cancel()
    if args.attach:
        return _follow(_current_or_fail())
    if not args.model or not args.out:
        raise CommandError("give MODEL and --out DIR (or --status / --attach / --cancel)", 2)
    spec = JobSpec.from_preset(
        args.model,
        args.out,
        args.preset,
        iters=args.iters,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        dataset=args.dataset,
        device=args.device,
    )
    try:
        job = QuantizeJob.start(spec, settings().quant_python)
    except QuantizeError as error:
        raise CommandError(str(error)) from None
    print(
        f"quantize job {job.record.job_id} started (pid {job.record.pid}); "
        f"log {job.record.log_path}"
    )
    if args.detach:
        return 0
    return _follow(job)


def _current_or_fail() -> QuantizeJob:
    job = QuantizeJob.current()
    if job is None:
        raise CommandError("no quantize job on this machine", 1)
    return job


def describe(progress: QuantizeProgress) -> str:
    parts = [progress.phase.value]
    if progress.total_blocks:
        parts.append(f"block {progress.done_blocks}/{progress.total_blocks}")
        if progress.block:
            parts.append(progress.block)
    parts.append(f"elapsed {_clock(progress.elapsed_s)}")
    if progress.eta_s is not None and not progress.phase.finished:
        parts.append(f"ETA {_clock(progress.eta_s)}")
    return "  ".join(parts)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _follow(job: QuantizeJob) -> int:
    last = ""
    try:
        while True:
            progress = job.progress()
            line = describe(progress)
            if line != last:
                print(line, flush=True)
                last = line
            if progress.phase.finished:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("detached; the job keeps running (`qtui quantize --attach` / `--cancel`)")
        return 0
    return _report_end(job, progress)


def _report_end(job: QuantizeJob, progress: QuantizeProgress) -> int:
    if progress.phase is JobPhase.CANCELLED:
        raise CommandError("quantize job cancelled", 130)
    if progress.phase is JobPhase.FAILED:
        raise CommandError(f"quantize job failed: {progress.error} (log {job.record.log_path})")
    finish = job.finish()
    print(f"quantized: {finish.output_dir}")
    for action in finish.patch_actions:
        print(f"  patched: {action}")
    print(f"MTP doctor: {finish.verdict}: {finish.reason}")
    name = finish.output_dir.rstrip("/").rsplit("/", 1)[-1]
    print("serve profile (add to config.toml):")
    print(tomli_w.dumps({"profiles": {name: finish.profile}}))
    return 0 if finish.verdict == "ready" else 1


def _status(as_json: bool) -> int:
    job = _current_or_fail()
    progress = job.progress()
    if as_json:
        data = {
            "job_id": job.record.job_id,
            "pid": job.record.pid,
            "log_path": job.record.log_path,
            "spec": job.record.spec,
            "progress": asdict(progress) | {"fraction": progress.fraction},
            "finish": job.record.finish,
        }
        print(json.dumps(data, indent=2))
    else:
        print(f"job {job.record.job_id}: {describe(progress)}")
        if progress.error:
            print(f"error: {progress.error}", file=sys.stderr)
    return 0


def _cancel() -> int:
    job = _current_or_fail()
    if not job.is_running():
        print(f"job {job.record.job_id} is not running ({job.progress().phase.value})")
        return 0
    progress = job.cancel()
    print(f"job {job.record.job_id}: {progress.phase.value}")
    return 0
