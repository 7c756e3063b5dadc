"""`qtui serve start|stop|restart|status|logs`: the server, without the panel."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from backend.config import SPEC_METHODS, ConfigError, ServeProfile, resolve_profile
from backend.log_follow import LogFollower
from backend.serve_args import LaunchRefused
from backend.supervisor import Phase, ServerStatus, SupervisorError, took
from backend.vllm_log import tail_lines
from tui.commands.common import settings, supervisor
from tui.commands.errors import CommandError


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="start, stop and watch the vLLM server")
    actions = serve.add_subparsers(dest="serve_command", metavar="ACTION", required=True)

    start = actions.add_parser("start", help="start the server and wait until it is ready")
    _add_profile_options(start)
    start.add_argument("--no-wait", action="store_true", help="return once launched")
    start.set_defaults(handler=cmd_start)

    restart = actions.add_parser("restart", help="stop, then start (same settings by default)")
    _add_profile_options(restart)
    restart.set_defaults(handler=cmd_restart)

    toggle = actions.add_parser(
        "toggle-spec", help="restart with speculative decoding (MTP) switched on/off"
    )
    toggle.set_defaults(handler=cmd_toggle_spec)

    stop = actions.add_parser("stop", help="stop the server and every process it started")
    stop.set_defaults(handler=cmd_stop)

    status = actions.add_parser("status", help="phase, url, profile, spec, KV dtype, uptime")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=cmd_status)

    logs = actions.add_parser("logs", help="the server log")
    logs.add_argument("-n", type=int, default=50, help="lines from the end (default 50)")
    logs.add_argument(
        "-f", "--follow", action="store_true",
        help="keep printing new lines (of the next server's log after a restart)",
    )  # fmt: skip
    logs.set_defaults(handler=cmd_logs)


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "profile", nargs="?", help="serve profile name (default_profile if omitted)"
    )
    parser.add_argument("--model", help="checkpoint directory (overrides the profile)")
    parser.add_argument("--port", type=int, help="port (overrides the profile)")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--spec", choices=SPEC_METHODS, help="speculative decoding method")
    parser.add_argument(
        "--kv-cache-dtype", help="KV-cache dtype, checked against the installed vLLM"
    )
    parser.add_argument(
        "--skip-mtp-check",
        action="store_true",
        help="start MTP even where the MTP doctor says vLLM would not draft (to see for yourself)",
    )
    parser.add_argument(
        "--skip-fit-check",
        action="store_true",
        help="start even where `qtui fit` says the KV cache cannot fit",
    )
    parser.epilog = "Arguments after `--` go to `vllm serve` unchanged."


def build_profile(
    args: argparse.Namespace, *, fallback: tuple[str, ServeProfile] | None = None
) -> tuple[str, ServeProfile]:
    """The profile named on the command line (or the fallback), with overrides applied."""
    config = settings()
    if args.profile or fallback is None:
        try:
            name, profile = resolve_profile(config, args.profile)
        except ConfigError:
            if not args.model:
                raise
            name, profile = "adhoc", ServeProfile(model=args.model)
    else:
        name, profile = fallback
    updates: dict[str, Any] = {}
    if args.model:
        updates["model"] = args.model
    if args.port:
        updates["port"] = args.port
    if args.host:
        updates["host"] = args.host
    if args.kv_cache_dtype:
        updates["kv_cache_dtype"] = args.kv_cache_dtype
    if args.spec:
        updates["speculative"] = profile.speculative.model_copy(update={"method": args.spec})
    if args.passthrough:
        updates["extra_args"] = [*profile.extra_args, *args.passthrough]
    return name, ServeProfile.model_validate({**profile.model_dump(), **updates})


def _progress(status: ServerStatus) -> None:
    if status.phase in (Phase.STARTING, Phase.LOADING):
        stage = f": {status.stage.describe()}" if status.stage else ""
        print(f"qtui: {status.phase.value}{stage}…", file=sys.stderr, flush=True)


def _start(args: argparse.Namespace, restart: bool) -> int:
    config = settings()
    sup = supervisor(config, need_engine=True)
    fallback = None
    record = sup.load_record()
    if restart and record is not None and not args.profile:
        fallback = (record.profile_name, record.serve_profile)
    name, profile = build_profile(args, fallback=fallback)
    started = time.monotonic()
    try:
        if restart:
            sup.stop()
        status = sup.start(
            name,
            profile,
            wait=not getattr(args, "no_wait", False),
            timeout_s=config.ready_timeout_s,
            on_phase=_progress,
            check_mtp=not getattr(args, "skip_mtp_check", False),
            check_fit=not getattr(args, "skip_fit_check", False),
        )
    except LaunchRefused as error:
        raise CommandError(str(error), exit_code=2) from None
    except SupervisorError as error:
        raise CommandError(str(error), exit_code=1) from None
    if status.record:
        for note in status.record.notes:
            print(f"qtui: {note}", file=sys.stderr)
        print(
            f"qtui: {status.phase.value} at {status.record.url} "
            f"(profile {name}, spec {profile.speculative.method}, "
            f"kv {profile.kv_cache_dtype}) in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    return _start(args, restart=False)


def cmd_restart(args: argparse.Namespace) -> int:
    return _start(args, restart=True)


def cmd_toggle_spec(args: argparse.Namespace) -> int:
    config = settings()
    sup = supervisor(config, need_engine=True)
    started = time.monotonic()
    try:
        status = sup.toggle_spec(timeout_s=config.ready_timeout_s, on_phase=_progress)
    except LaunchRefused as error:
        raise CommandError(str(error), exit_code=2) from None
    except SupervisorError as error:
        raise CommandError(str(error), exit_code=1) from None
    spec = status.record.spec if status.record else "?"
    print(
        f"qtui: {status.phase.value} with spec {spec}{took(status.record)}; "
        f"{time.monotonic() - started:.1f} s in all",
        file=sys.stderr,
    )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    sup = supervisor()
    try:
        report = sup.stop()
    except SupervisorError as error:
        raise CommandError(str(error)) from None
    steps = ", ".join(report.steps) or "nothing to stop"
    print(f"qtui: stopped ({steps}) in {report.seconds:.1f} s", file=sys.stderr)
    return 0


def status_json(status: ServerStatus) -> dict[str, Any]:
    """The status, plus `telemetry`: windowed figures from two scrapes ~1 s apart (or null),
    and `gpu`: every GPU and the memory the server's processes hold on them.

    `telemetry` is null unless the server is ready (`startup` is the log's startup readout,
    `fit` the KV cache vLLM allocated against `qtui fit`'s arithmetic, `spec_run` spec
    decoding since it started); `gpu` is null while no server runs.
    """
    from backend.fit import check_record_fit
    from backend.speed_ledger import SpeedLedger
    from backend.telemetry_checks import scraper_for, startup_readout

    data = status.to_json()
    data["telemetry"] = None
    data["gpu"] = None
    if status.phase.is_up and status.record is not None:
        from backend.gpu import GpuSampler, gpu_summary

        sampler = GpuSampler(pgid=status.record.pgid)
        try:
            data["gpu"] = gpu_summary(sampler.sample())
        finally:
            sampler.close()
    if status.phase is Phase.READY and status.record is not None:
        with scraper_for(status.record) as scraper:
            scraper.scrape()
            time.sleep(1.0)
            telemetry = scraper.scrape().to_json()
        readout = startup_readout(Path(status.record.log_path))
        telemetry["startup"] = readout.to_json()
        telemetry["fit"] = check_record_fit(status.record, readout)
        telemetry["speed"] = SpeedLedger().comparison(status.record).to_json()
        data["telemetry"] = telemetry
    return data


def cmd_status(args: argparse.Namespace) -> int:
    from backend.speed_ledger import SpeedLedger

    sup = supervisor()
    status = sup.status()
    if args.json:
        print(json.dumps(status_json(status), indent=2))
        return 0
    data = status.to_json()
    if status.record is None:
        print("stopped (no server started yet)")
        return 0
    uptime = f"{data['uptime_s']:.0f} s" if data["uptime_s"] is not None else "-"
    print(f"phase    {data['phase']}")
    print(f"url      {data['url']}")
    print(f"profile  {data['profile']}  ({data['model']})")
    print(f"spec     {data['spec']}    kv {data['kv_cache_dtype']}")
    print(f"pid      {data['pid'] or '-'}    uptime {uptime}")
    if took(status.record):
        print(f"ready   {took(status.record)}")
    if data["reason"]:
        print(f"reason   {data['reason']}")
    print(f"speed    {SpeedLedger(sup.state_dir).comparison(status.record).describe()}")
    if status.phase is Phase.READY:
        from backend.fit import check_record_fit
        from backend.telemetry_checks import startup_readout

        note = check_record_fit(status.record, startup_readout(Path(status.record.log_path)))
        if note:
            print(f"fit      {note}")
    print(f"log      {data['log']}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    sup = supervisor()
    record = sup.load_record()
    if record is None:
        raise CommandError("no server log yet: start a server first")
    if not args.follow:
        for line in tail_lines(Path(record.log_path), args.n):
            print(line)
        return 0
    follower = LogFollower(record.log_path, start_lines=args.n)
    try:
        while True:
            for line in follower.read_new():
                print(line, flush=True)
            time.sleep(0.25)
            # A restart or a toggle starts a new log: follow the server, not the file.
            record = sup.load_record() or record
            if Path(record.log_path) != follower.path:
                print(f"qtui: now {record.log_path}", file=sys.stderr, flush=True)
                follower.start_lines = None  # all of the new log is news
                follower.path = record.log_path
    except KeyboardInterrupt:
        return 0
