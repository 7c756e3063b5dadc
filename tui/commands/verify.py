"""`qtui verify [PROFILE] [--url URL] [--json]`: is the running server serving right?

Without --url it verifies the server qtui runs (against the profile it was
started from, with its log at hand); with --url any vLLM server, against
PROFILE when one is named. One line per check (✓ passed, ✗ failed, a dash skipped),
a failure's fix under it; the exit code is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from backend.config import resolve_profile
from backend.supervisor import Phase
from backend.verify import Check, VerifyTarget, any_failed, verify
from tui.cli import CommandError
from tui.commands.common import settings, supervisor


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify", help="probe the running server: health, chat, reasoning, tools, MTP, KV cache"
    )
    parser.add_argument(
        "profile", nargs="?", help="profile to compare against (default: the one it runs)"
    )
    parser.add_argument("--url", help="server base URL (default: the server qtui runs)")
    parser.add_argument(
        "--api-key-env",
        help="environment variable holding the API key (default: the profile's, else VLLM_API_KEY)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(handler=cmd_verify)


def target_for(args: argparse.Namespace) -> VerifyTarget:
    """The server to verify: --url (with PROFILE's settings if named), else qtui's own."""
    if args.url:
        profile = resolve_profile(settings(), args.profile)[1] if args.profile else None
        key_env = args.api_key_env or (profile.api_key_env if profile else None)
        return VerifyTarget(args.url, key_env or "VLLM_API_KEY", profile)
    status = supervisor().status()
    record = status.record
    if record is None or not status.phase.is_up:
        raise CommandError("no server is running: start one with `qtui serve start`, or pass --url")
    if args.profile and args.profile != record.profile_name:
        raise CommandError(
            f"qtui runs profile {record.profile_name!r}, not {args.profile!r}: "
            "pass --url to verify another server against that profile",
            exit_code=2,
        )
    if status.phase is not Phase.READY:
        stage = f": {status.stage.describe()}" if status.stage else ""
        raise CommandError(
            f"the server is {status.phase.value}{stage}; verify it once it is ready"
            + (f" ({status.reason})" if status.reason else "")
        )
    target = VerifyTarget.from_record(record)
    if args.api_key_env:
        target.api_key_env = args.api_key_env
    return target


def cmd_verify(args: argparse.Namespace) -> int:
    target = target_for(args)

    def show(check: Check) -> None:
        if not args.json:
            print(check.line(), flush=True)

    if not args.json:
        against = "its profile" if target.profile else "no profile (URL only)"
        print(f"qtui: verifying {target.url} against {against}", file=sys.stderr)
    checks = verify(target, on_check=show)
    failures = any_failed(checks)
    if args.json:
        print(
            json.dumps(
                {
                    "url": target.url,
                    "ok": not failures,
                    "checks": [check.to_json() for check in checks],
                },
                indent=2,
            )
        )
    return 1 if failures else 0
