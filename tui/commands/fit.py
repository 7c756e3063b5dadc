"""`qtui fit [PROFILE]`: will this profile's KV cache fit, before launching anything.

Reads the checkpoint's config.json and safetensors headers only; the figures follow
vLLM's own KV-cache arithmetic (backend/fit.py), so `KV tokens` is the number vLLM
logs as `KV cache size: N tokens` for the same settings.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from backend.config import ConfigError, ServeProfile, resolve_profile
from backend.fit import (
    GIB,
    DtypeFit,
    FitError,
    FitReport,
    FitTarget,
    human_bytes,
    local_target,
)
from tui.cli import CommandError
from tui.commands.common import engine_or_none, settings

size = human_bytes
EXIT_CODES = {"fits": 0, "tight": 0, "unknown": 0, "does not fit": 3}


def register(subparsers: Any) -> None:
    fit = subparsers.add_parser(
        "fit", help="will this profile fit: KV tokens, largest context, concurrency (exit 3: no)"
    )
    fit.add_argument("profile", nargs="?", help="serve profile name (default_profile if omitted)")
    fit.add_argument("--model", help="checkpoint directory (overrides the profile)")
    fit.add_argument("--max-model-len", help="context length (4096, 32k, 1K)")
    fit.add_argument("--kv-cache-dtype", help="KV-cache dtype (auto, fp8, ...)")
    fit.add_argument("--max-num-seqs", type=int, help="requests at once")
    fit.add_argument("--spec", choices=("off", "mtp"), help="MTP drafting on or off")
    budget = fit.add_mutually_exclusive_group()
    budget.add_argument("--gpu-memory-utilization", type=float, help="fraction of GPU memory")
    budget.add_argument("--kv-cache-memory-bytes", type=int, help="fixed KV-cache size in bytes")
    fit.add_argument(
        "--gpu-memory-gib",
        type=float,
        help="plan for a GPU of this size (GiB) instead of this machine's",
    )
    fit.add_argument("--json", action="store_true", help="the whole report as JSON")
    fit.set_defaults(handler=cmd_fit)


def _profile(args: argparse.Namespace) -> ServeProfile:
    try:
        _, profile = resolve_profile(settings(), args.profile)
    except ConfigError:
        if not args.model:
            raise
        profile = ServeProfile(model=args.model)
    updates: dict[str, Any] = {}
    if args.model:
        updates["model"] = args.model
    if args.max_model_len:
        updates["max_model_len"] = (
            int(args.max_model_len) if args.max_model_len.isdigit() else args.max_model_len
        )
    if args.kv_cache_dtype:
        updates["kv_cache_dtype"] = args.kv_cache_dtype
    if args.max_num_seqs:
        updates["max_num_seqs"] = args.max_num_seqs
    if args.spec:
        updates["speculative"] = profile.speculative.model_copy(update={"method": args.spec})
    if args.gpu_memory_utilization is not None:
        updates["gpu_memory_utilization"] = args.gpu_memory_utilization
        updates["kv_cache_memory_bytes"] = None
    if args.kv_cache_memory_bytes is not None:
        updates["kv_cache_memory_bytes"] = args.kv_cache_memory_bytes
    try:
        return ServeProfile.model_validate({**profile.model_dump(), **updates})
    except ValueError as error:
        raise CommandError(f"fit: {str(error).splitlines()[0]}", exit_code=2) from None


def _where(args: argparse.Namespace, gpus: list[int] | None = None) -> FitTarget:
    """This machine (its engine and the GPUs chosen), or a GPU of the size asked."""
    target = local_target(engine_or_none(settings()), gpus, sample_gpus=not args.gpu_memory_gib)
    if args.gpu_memory_gib:
        total = int(args.gpu_memory_gib * GIB)
        return replace(target, platform="cuda", gpu_total_bytes=total, gpu_free_bytes=None)
    return target


def cmd_fit(args: argparse.Namespace) -> int:
    profile = _profile(args)
    try:
        report = _where(args, profile.gpu_indices()).predict(profile)
    except FitError as error:
        raise CommandError(f"fit: {error}", exit_code=2) from None
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(render(report)))
    return EXIT_CODES[report.verdict]


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _row(fit: DtypeFit) -> list[str]:
    concurrency = "-" if fit.concurrency is None else f"{fit.concurrency:.2f}"
    return [
        "/".join(fit.names),
        size(fit.attention_bytes_per_token),
        size(fit.state_bytes_per_sequence) if fit.state_bytes_per_sequence else "-",
        str(fit.block_size),
        _count(fit.kv_tokens),
        _count(fit.largest_context),
        concurrency,
    ]


def render(report: FitReport) -> list[str]:
    """The short table `qtui fit` prints."""
    r = report
    layers = f"{r.full_attention_layers} full-attention"
    if r.linear_attention_layers:
        layers += f" + {r.linear_attention_layers} Gated DeltaNet"
    if r.mtp_attention_layers:
        layers += f" + {r.mtp_attention_layers} MTP"
    parts = [f"language {size(r.weights['language'])}"]
    if r.weights["mtp"]:
        parts.append(f"MTP {size(r.weights['mtp'])}" + ("" if r.mtp_attention_layers else " (off)"))
    if r.weights["vision"]:
        parts.append(f"vision {size(r.weights['vision'])}")
    tp = f" per rank (TP {r.tensor_parallel_size})" if r.tensor_parallel_size > 1 else ""
    budget = size(r.budget_bytes) if r.budget_bytes is not None else "unknown"
    lines = [
        f"model     {r.model}",
        f"layers    {layers}; platform {r.platform}",
        f"weights   {size(r.weights_loaded_bytes)} loaded{tp} ({', '.join(parts)})",
        f"budget    {budget} for the KV cache: {r.budget_source}",
    ]
    if r.margin_bytes:
        lines.append(
            f"margin    {size(r.margin_bytes)} held back (activation peak, non-torch, graphs)"
        )
    if r.gpu_free_bytes is not None and r.gpu_total_bytes:
        lines.append(f"gpu       {size(r.gpu_free_bytes)} free of {size(r.gpu_total_bytes)}")
    seqs = f", max_num_seqs {r.max_num_seqs}" if r.max_num_seqs else ""
    lines += [f"request   max_model_len {r.max_model_len:,}{seqs}", ""]
    header = ["KV dtype", "KV/token", "state/seq", "block", "KV tokens", "largest ctx",
              f"seqs@{r.max_model_len:,}"]  # fmt: skip
    rows = [header, _row(r.chosen), *(_row(other) for other in r.others)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        mark = "> " if index == 1 else "  "
        lines.append(mark + "  ".join(cells))
    lines += ["", f"verdict   {r.verdict}: {r.reason}"]
    lines += [f"fix       {fix}" for fix in r.fixes]
    return lines
