"""`qtui bench`: decode speed on fixed prompts, and with --ab spec decoding off vs on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from backend.bench import (
    MODEL_CARD_PROMPTS,
    BenchError,
    BenchPrompt,
    compare_table,
    list_runs,
    load_prompts,
    load_run,
    result_table,
    run_bench,
    save_run,
)
from backend.serve_args import LaunchRefused
from backend.supervisor import SupervisorError
from tui.commands.common import settings, supervisor
from tui.commands.errors import CommandError


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="decode tok/s on the model card's four prompts; --ab: spec decoding off vs on",
    )
    bench.add_argument(
        "profile", nargs="?", help="the profile qtui runs (default: the running one)"
    )
    bench.add_argument("--url", help="a server qtui did not start (no --ab there)")
    bench.add_argument("--ab", action="store_true", help="restart spec off, then on; compare")
    bench.add_argument("--prompts", type=Path, help="JSON list / JSONL / text, a prompt a line")
    bench.add_argument("--max-tokens", type=int, help="tokens per reply (default: per prompt)")
    bench.add_argument("--repeat", type=int, default=1, help="replies per prompt (median)")
    bench.add_argument("--concurrency", type=int, default=1, help="replies at once per prompt")
    bench.add_argument("--json", type=Path, metavar="OUT", help="also write the result here")
    bench.add_argument("--list", action="store_true", help="the kept results")
    bench.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="two kept results side by side"
    )
    bench.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        if args.list:
            return _list()
        if args.compare:
            print(compare_table(load_run(args.compare[0]), load_run(args.compare[1])))
            return 0
        return _run(args)
    except BenchError as error:
        raise CommandError(str(error), 1) from None
    except (LaunchRefused, SupervisorError) as error:
        raise CommandError(str(error), 2 if isinstance(error, LaunchRefused) else 1) from None


def _list() -> int:
    runs = list_runs()
    if not runs:
        print("no bench results yet: run `qtui bench` (or `qtui bench --ab`)")
        return 0
    for run in runs:
        halves = ", ".join(
            f"{half['spec']} {half['overall_tokens_per_s'] or 0:.1f} tok/s"
            for half in run["halves"]
        )
        overall = (run.get("speedup") or {}).get("overall")
        gain = f"  {overall:.2f}x" if overall else ""
        print(
            f"{run['id']}  {run.get('profile_name') or run['url']}  {run['device']}  {halves}{gain}"
        )
    return 0


def _say(text: str) -> None:
    print(f"qtui: {text}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    if args.repeat < 1 or args.concurrency < 1:
        raise BenchError("--repeat and --concurrency take 1 or more")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise BenchError("--max-tokens takes 1 or more")
    prompts = (
        load_prompts(args.prompts, args.max_tokens)
        if args.prompts
        else tuple(
            BenchPrompt(p.name, p.prompt, args.max_tokens or p.max_tokens)
            for p in MODEL_CARD_PROMPTS
        )
    )
    config = settings()
    run = run_bench(
        supervisor(config, need_engine=args.ab),
        prompts,
        ab=args.ab,
        url=args.url,
        profile_name=args.profile,
        repeat=args.repeat,
        concurrency=args.concurrency,
        ready_timeout_s=config.ready_timeout_s,
        on_progress=_say,
    )
    path = save_run(run, args.json)
    print(result_table(run))
    _say(f"kept as {run.id} ({path})")
    return 0
