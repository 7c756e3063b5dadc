"""`qtui tiny-model DIR` and `qtui init`: what `make run` uses to set a box up."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from backend.config import cpu_profile, load_settings, mtp_cpu_profile, save_user_config
from backend.paths import config_file
from backend.tiny_qwen35 import build_tiny_qwen35
from backend.tinymodel import build_tiny_model
from tui.commands.errors import CommandError


def register(subparsers: Any) -> None:
    tiny = subparsers.add_parser(
        "tiny-model", help="build a tiny random Qwen3-style model locally (no hub, seconds)"
    )
    tiny.add_argument("dir", type=Path, help="where to write the checkpoint")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--mtp",
        action="store_true",
        help="a tiny Qwen3.5 (the model card's layout) with an MTP head that drafts",
    )
    tiny.add_argument(
        "--mtp-head",
        choices=("identity", "random"),
        default="identity",
        help="with --mtp: a head built to agree with the model (default) or random weights",
    )
    tiny.set_defaults(handler=cmd_tiny_model)

    init = subparsers.add_parser(
        "init", help="write the config: engine path and a CPU profile for a local model"
    )
    init.add_argument("--engine", help="vllm executable or Python with vllm")
    init.add_argument("--cpu-model", type=Path, help="add profile `tiny-cpu` serving this model")
    init.add_argument(
        "--mtp-model",
        type=Path,
        help="add profile `tiny-mtp` (MTP on) serving this tiny Qwen3.5, and make it the default",
    )
    init.add_argument("--port", type=int, default=8000)
    init.set_defaults(handler=cmd_init)


def cmd_tiny_model(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        if args.mtp:
            out = build_tiny_qwen35(args.dir, seed=args.seed, mtp_head=args.mtp_head)
        else:
            out = build_tiny_model(args.dir, seed=args.seed)
    except OSError as error:
        raise CommandError(
            f"cannot write a model to {args.dir}: {error.strerror or error}"
        ) from None
    heads = {"identity": "an MTP head built to draft", "random": "a random (useless) MTP head"}
    kind = f"Qwen3.5 with {heads[args.mtp_head]}" if args.mtp else "Qwen3"
    print(f"qtui: tiny {kind} model at {out} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
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
    if args.mtp_model and "tiny-mtp" not in config.profiles:
        model = str(args.mtp_model.absolute())
        config.profiles["tiny-mtp"] = mtp_cpu_profile(model, port=args.port)
        changed.append(f"profile tiny-mtp ({model})")
        # A newcomer's first server should be the one MTP runs on; a default the
        # user picked (anything but init's own earlier tiny-cpu) stays.
        if config.default_profile in (None, "tiny-cpu"):
            config.default_profile = "tiny-mtp"
            changed.append("default profile tiny-mtp")
    if config.default_profile is None and config.profiles:
        config.default_profile = next(iter(config.profiles))
        changed.append(f"default profile {config.default_profile}")
    if changed:
        path = save_user_config(config)
        print(f"qtui: {path}: " + "; ".join(changed), file=sys.stderr)
    else:
        print(f"qtui: {config_file()} already set up", file=sys.stderr)
    return 0
