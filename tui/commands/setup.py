"""`qtui tiny-model DIR` and `qtui init`: what `make run` uses to set a box up."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from backend.config import cpu_profile, load_settings, save_user_config
from backend.paths import config_file
from backend.tinymodel import build_tiny_model
from tui.cli import CommandError


def register(subparsers: Any) -> None:
    tiny = subparsers.add_parser(
        "tiny-model", help="build a tiny random Qwen3-style model locally (no hub, seconds)"
    )
    tiny.add_argument("dir", type=Path, help="where to write the checkpoint")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=cmd_tiny_model)

    init = subparsers.add_parser(
        "init", help="write the config: engine path and a CPU profile for a local model"
    )
    init.add_argument("--engine", help="vllm executable or Python with vllm")
    init.add_argument("--cpu-model", type=Path, help="add profile `tiny-cpu` serving this model")
    init.add_argument("--port", type=int, default=8000)
    init.set_defaults(handler=cmd_init)


def cmd_tiny_model(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        out = build_tiny_model(args.dir, seed=args.seed)
    except OSError as error:
        raise CommandError(
            f"cannot write a model to {args.dir}: {error.strerror or error}"
        ) from None
    print(f"qtui: tiny model at {out} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Add what is missing; never overwrite a setting the user already has."""
    config = load_settings()
    changed = []
    if args.engine and config.vllm == "vllm":
        config.vllm = str(Path(args.engine).absolute())
        changed.append(f"engine {config.vllm}")
    if args.cpu_model and "tiny-cpu" not in config.profiles:
        model = str(args.cpu_model.absolute())
        config.profiles["tiny-cpu"] = cpu_profile(model, port=args.port)
        changed.append(f"profile tiny-cpu ({model})")
    if config.default_profile is None and config.profiles:
        config.default_profile = next(iter(config.profiles))
        changed.append(f"default profile {config.default_profile}")
    if changed:
        path = save_user_config(config)
        print(f"qtui: {path}: " + "; ".join(changed), file=sys.stderr)
    else:
        print(f"qtui: {config_file()} already set up", file=sys.stderr)
    return 0
