"""`qtui mtp inspect|patch PATH`: check and repair a checkpoint's MTP head for vLLM."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from backend.mtp_doctor import Report, diagnose_checkpoint
from backend.mtp_patch import PatchError, patch_checkpoint
from tui.commands.errors import CommandError


def register(subparsers: Any) -> None:
    mtp = subparsers.add_parser("mtp", help="check and repair a checkpoint's MTP head")
    actions = mtp.add_subparsers(dest="mtp_command", metavar="ACTION", required=True)

    inspect = actions.add_parser(
        "inspect", help="exit 0 ready, 1 fixable (run patch), 2 MTP impossible or not a checkpoint"
    )
    inspect.add_argument("path", type=Path, help="checkpoint directory")
    inspect.add_argument("--json", action="store_true", help="the whole report as JSON")
    inspect.set_defaults(handler=cmd_inspect)

    patch = actions.add_parser("patch", help="make mtp.fc BF16/unquantized, fix index and configs")
    patch.add_argument("path", type=Path, help="checkpoint directory")
    patch.add_argument(
        "--dry-run", action="store_true", help="say what would change, change nothing"
    )
    patch.add_argument("--no-backup", action="store_true", help="keep no qtui-backup-* copy")
    patch.set_defaults(handler=cmd_patch)


def _details(report: Report) -> list[str]:
    lines = [f"checkpoint: {report.path}"]
    if report.architecture:
        lines.append(f"architecture: {report.architecture} ({report.model_type})")
    lines.append(
        f"MTP layers: {report.mtp_layers_declared} declared, "
        f"{len(report.mtp_layers_present)} present, {report.mtp_tensors} mtp.* tensors"
    )
    if report.fc is not None:
        lines.append(f"mtp.fc: {report.fc.describe()}")
    if report.fc_built_quantized is not None:
        built = "quantized (INT4)" if report.fc_built_quantized else "unquantized (BF16)"
        version = report.vllm_version or "0.25 and later"
        lines.append(f"vLLM {version} builds mtp.fc as: {built}")
    if report.uncovered_packed:
        lines.append(f"packed layers vLLM would build unquantized: {len(report.uncovered_packed)}")
    if report.fused_inconsistent:
        lines.append(
            f"fused layers with inconsistent quant config: {len(report.fused_inconsistent)}"
        )
    lines += [f"  - {problem}" for problem in report.problems]
    lines += [f"  note: {note}" for note in report.notes]
    return lines


def _engine_version() -> str | None:
    """The configured vLLM's version (read from its files), so verdicts speak for it."""
    from backend.config import load_settings
    from backend.engine import EngineError, engine_facts, resolve_engine

    try:
        return engine_facts(resolve_engine(load_settings().vllm)).version
    except (EngineError, OSError, ValueError):
        return None


def cmd_inspect(args: argparse.Namespace) -> int:
    report = diagnose_checkpoint(args.path, _engine_version())
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(_details(report)))
        print(f"{report.verdict.name.lower()}: {report.reason}")
    return report.exit_code


def cmd_patch(args: argparse.Namespace) -> int:
    try:
        result = patch_checkpoint(args.path, dry_run=args.dry_run, backup=not args.no_backup)
    except PatchError as error:
        raise CommandError(str(error), error.exit_code) from None
    if result.recovered:
        print(result.recovered)
    if not result.actions:
        print(f"nothing to do: {result.before.reason if result.before else 'ready'}")
        return 0
    prefix = "would " if result.dry_run else ""
    for action in result.actions:
        print(f"{prefix}{action}")
    if result.dry_run:
        print(f"would rewrite: {', '.join(result.files)}")
        return 0
    if result.backup_dir is not None:
        print(f"backup: {result.backup_dir}")
    after = result.after
    if after is None or after.exit_code != 0:
        reason = after.reason if after else "unknown"
        raise CommandError(f"patched, but still not ready: {reason}", 1)
    print(f"ready: {after.reason}")
    return 0
