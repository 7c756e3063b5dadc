"""Repair a checkpoint's MTP head for vLLM, crash-safely.

What it changes (each only when needed): a packed INT4 mtp.fc becomes
`mtp.fc.weight` BF16 [H, 2H] (zero convention read from the data); the index
loses the packed entries and dangling ones, gains unindexed shard tensors,
and gets total_size from the headers; config.json and quantization_config.json
get extra_config["mtp.fc"] = 16-bit and a block_name_to_quantize that covers
every packed layer.

Crash safety is a roll-forward journal. Every new file is written beside its
target as NAME.qtui-new and fsynced; backups are hard links (free, and the old
inode survives the rename); then the journal listing the renames is committed
with one atomic rename. Before that point a crash leaves the original (stray
temps are removed on the next run); after it, the next run (or
`recover_interrupted_patch`) finishes the renames. The index is renamed last.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.atomic import fsync_dir, write_atomic, write_bytes_durably
from backend.checkpoint import (
    INDEX_NAME,
    JOURNAL_NAME,
    QUANT_CONFIG_FILE,
    Checkpoint,
    NotACheckpoint,
    adopt_unindexed_mtp,
    load_checkpoint,
)
from backend.mtp_doctor import Report, Verdict, diagnose
from backend.safetensors_header import (
    TensorSpec,
    float32_to_bf16_bits,
    read_tensor,
    write_safetensors,
)
from backend.vllm_quant_rules import (
    FC,
    UNQUANTIZED_ENTRY,
    block_names,
    fc_layer_config,
    inconsistent_fused_groups,
    unpack_int4_cols,
    unpack_int4_rows,
    vllm_layer_bits,
)

TEMP_SUFFIX = ".qtui-new"
PACKED_FC = tuple(f"{FC}{suffix}" for suffix in (".qweight", ".qzeros", ".scales"))
# Renamed in this order: data first, what points at it (configs, then the index) last.
RENAME_ORDER = (".safetensors", QUANT_CONFIG_FILE, "config.json", INDEX_NAME)

StepHook = Callable[[str], None]
"""Called with the name of each step as it completes (tests inject crashes here)."""


class PatchError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class PatchResult:
    path: Path
    changed: bool
    dry_run: bool
    actions: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    backup_dir: Path | None = None
    recovered: str | None = None
    """What recovery did first, if an earlier patch was interrupted."""
    before: Report | None = None
    after: Report | None = None


def dequantize_int4(
    qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int, offset: int
) -> np.ndarray:
    """w[o, i] = (q[i, o] - (z[g(i), o] + offset)) * s[g(i), o], as float32 [out, in]."""
    q = unpack_int4_rows(qweight)
    zeros = unpack_int4_cols(qzeros) + offset
    group_of_row = np.arange(q.shape[0]) // group_size
    # Small integers times an fp16 scale are exact in float32: rounding happens once, to bf16.
    weight = (q - zeros[group_of_row]).astype(np.float32) * scales.astype(np.float32)[group_of_row]
    return np.ascontiguousarray(weight.T)


def _fc_scales(checkpoint: Checkpoint, shard: str) -> np.ndarray:
    header = checkpoint.headers[shard]
    raw = read_tensor(checkpoint.path / shard, f"{FC}.scales", header)
    if header.tensors[f"{FC}.scales"].dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw


def dequantized_fc_bits(checkpoint: Checkpoint, report: Report) -> np.ndarray:
    """The packed mtp.fc as BF16 bits [H, 2H]."""
    fc = report.fc
    assert fc is not None and fc.kind == "packed" and fc.shard and fc.zero_offset is not None
    header = checkpoint.headers[fc.shard]
    path = checkpoint.path / fc.shard
    _, group, _ = fc_layer_config(checkpoint.quant_config)
    weight = dequantize_int4(
        read_tensor(path, f"{FC}.qweight", header),
        read_tensor(path, f"{FC}.qzeros", header),
        _fc_scales(checkpoint, fc.shard),
        group,
        fc.zero_offset,
    )
    if not np.isfinite(weight).all():
        raise PatchError("dequantized mtp.fc has non-finite values; the packed data is corrupt", 2)
    return float32_to_bf16_bits(weight)


def _block_prefix(layer: str) -> str:
    match = re.match(r"(.*?\.layers)\.\d+\.", layer)
    return match.group(1) if match else layer.rsplit(".", 1)[0]


def repaired_quant_config(
    checkpoint: Checkpoint, quant: dict[str, Any], dense_layers: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """quantization_config with mtp.fc unquantized and every packed layer covered."""
    fixed = copy.deepcopy(quant)
    actions: list[str] = []
    extra: dict[str, Any] = fixed.setdefault("extra_config", {}) or {}
    fixed["extra_config"] = extra
    if extra.get(FC) != UNQUANTIZED_ENTRY:
        extra[FC] = dict(UNQUANTIZED_ENTRY)
        actions.append('extra_config["mtp.fc"] = 16-bit (vLLM builds it unquantized)')
    packed = sorted(n[: -len(".qweight")] for n in checkpoint.weight_map if n.endswith(".qweight"))
    packed = [layer for layer in packed if layer != FC]
    uncovered = [layer for layer in packed if vllm_layer_bits(layer, fixed) >= 16]
    if uncovered:
        _cover_packed_layers(fixed, uncovered, packed, dense_layers, actions)
    for group in inconsistent_fused_groups(checkpoint, fixed):
        # Dense siblings that vLLM would build partly quantized: all of them 16-bit,
        # as stored. (Siblings stored differently cannot be repaired by a config.)
        if set(group.storage.values()) == {"dense"}:
            for member, bits in group.bits.items():
                if bits < 16:
                    layer = f"{group.prefix}.{member}"
                    extra[layer] = dict(UNQUANTIZED_ENTRY)
                    actions.append(f'extra_config["{layer}"] = 16-bit (fused with dense siblings)')
    return fixed, actions


def _cover_packed_layers(
    fixed: dict[str, Any],
    uncovered: list[str],
    packed: list[str],
    dense_layers: list[str],
    actions: list[str],
) -> None:
    """Make vLLM build every packed layer quantized, without quantizing a dense one."""
    extra: dict[str, Any] = fixed["extra_config"]
    before = {layer: vllm_layer_bits(layer, fixed) for layer in dense_layers}
    blocks = block_names(fixed)
    added = sorted({_block_prefix(layer) for layer in uncovered} - set(blocks))
    if added:
        merged = blocks + added
        original = fixed.get("block_name_to_quantize")
        fixed["block_name_to_quantize"] = ",".join(merged) if isinstance(original, str) else merged
        actions.append(f"block_name_to_quantize += {added}")
    for layer in dense_layers:
        # Widening the blocks must not quantize a layer that is stored dense.
        if before[layer] >= 16 and vllm_layer_bits(layer, fixed) < 16:
            extra[layer] = dict(UNQUANTIZED_ENTRY)
            actions.append(f'extra_config["{layer}"] = 16-bit (stored dense)')
    for layer in packed:
        if vllm_layer_bits(layer, fixed) >= 16 and layer in extra:
            del extra[layer]  # an explicit 16-bit entry for a packed layer contradicts the data
            actions.append(f'removed extra_config["{layer}"] (the layer is packed)')


def _dense_layers(checkpoint: Checkpoint, weight_map: dict[str, str]) -> list[str]:
    layers = []
    for name, shard in weight_map.items():
        if not name.endswith(".weight") or "embed" in name or name == "lm_head.weight":
            continue
        header = checkpoint.headers.get(shard)
        info = header.tensors.get(name) if header else None
        if info is not None and len(info.shape) == 2:
            layers.append(name[: -len(".weight")])
    return layers


@dataclass
class _Plan:
    actions: list[str] = field(default_factory=list)
    shards: dict[str, dict[str, TensorSpec]] = field(default_factory=dict)
    shard_metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    json_files: dict[str, dict[str, Any]] = field(default_factory=dict)


def _plan(checkpoint: Checkpoint, report: Report) -> _Plan:
    plan = _Plan()
    weight_map = checkpoint.weight_map
    fc = report.fc
    assert fc is not None
    shard_bytes = {name: header.data_bytes for name, header in checkpoint.headers.items()}
    if fc.kind == "packed":
        assert fc.shard is not None
        header = checkpoint.headers[fc.shard]
        bits = dequantized_fc_bits(checkpoint, report)
        specs: dict[str, TensorSpec] = {}
        for name in header.tensors:
            if name == f"{FC}.qweight":
                specs[f"{FC}.weight"] = TensorSpec.from_array(bits, "BF16")
            elif name not in PACKED_FC:
                specs[name] = TensorSpec.from_file(header, name)
        plan.shards[fc.shard] = specs
        plan.shard_metadata[fc.shard] = header.metadata
        shard_bytes[fc.shard] = sum(spec.nbytes for spec in specs.values())
        for name in PACKED_FC:
            weight_map.pop(name, None)
        weight_map[f"{FC}.weight"] = fc.shard
        plan.actions.append(
            f"mtp.fc: packed INT4 -> BF16 weight {list(bits.shape)} "
            f"(stored zero {fc.stored_zero}, offset {fc.zero_offset}) in {fc.shard}"
        )
    if checkpoint.index is not None:
        plan.json_files[INDEX_NAME] = _fixed_index(
            checkpoint, report, weight_map, shard_bytes, plan
        )
    quant = checkpoint.quant_config
    if quant is not None:
        fixed, actions = repaired_quant_config(
            checkpoint, quant, _dense_layers(checkpoint, weight_map)
        )
        plan.actions += actions
        if fixed != quant:
            plan.json_files["config.json"] = checkpoint.config | {"quantization_config": fixed}
        if checkpoint.quant_file_config is not None and checkpoint.quant_file_config != fixed:
            plan.json_files[QUANT_CONFIG_FILE] = fixed
            if report.quant_file_mismatch:
                plan.actions.append(f"{QUANT_CONFIG_FILE} synced with config.json")
    return plan


def _fixed_index(
    checkpoint: Checkpoint,
    report: Report,
    weight_map: dict[str, str],
    shard_bytes: dict[str, int],
    plan: _Plan,
) -> dict[str, Any]:
    index = report.index
    assert index is not None and checkpoint.index is not None
    for name in index.dangling:
        weight_map.pop(name, None)
    if index.dangling:
        plan.actions.append(f"index: dropped {len(index.dangling)} entries not in their shard")
    adopted = 0
    for shard in sorted(set(weight_map.values())):
        names = plan.shards[shard] if shard in plan.shards else checkpoint.headers[shard].tensors
        for name in names:
            if name not in weight_map:
                weight_map[name] = shard
                adopted += 1
    if adopted:
        plan.actions.append(f"index: added {adopted} shard tensors it did not list")
    for name in report.adopted_files:
        plan.actions.append(f"index: adopted {name} (mtp.* tensors it did not list)")
    total = sum(shard_bytes[shard] for shard in set(weight_map.values()))
    old_total = (checkpoint.index.get("metadata") or {}).get("total_size")
    if old_total != total:
        plan.actions.append(f"index: total_size {old_total} -> {total} (from headers)")
    metadata = dict(checkpoint.index.get("metadata") or {}) | {"total_size": total}
    return {
        **checkpoint.index,
        "metadata": metadata,
        "weight_map": dict(sorted(weight_map.items())),
    }


def _json_bytes(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")


def _rename_rank(name: str) -> int:
    for rank, suffix in enumerate(RENAME_ORDER):
        if name.endswith(suffix):
            return rank
    return len(RENAME_ORDER)


def recover_interrupted_patch(path: Path) -> str | None:
    """Finish a committed patch or clear an uncommitted one; returns what it did, if anything."""
    path = Path(path)
    journal = path / JOURNAL_NAME
    if journal.exists():
        entries = json.loads(journal.read_text())["renames"]
        for temp, final in entries:
            if (path / temp).exists():
                os.replace(path / temp, path / final)
        fsync_dir(path)
        journal.unlink()
        fsync_dir(path)
        return f"finished an interrupted patch ({len(entries)} files)"
    strays = [
        *path.glob(f"*{TEMP_SUFFIX}"),
        *path.glob(f".{JOURNAL_NAME}.*.tmp"),  # write_atomic's temp for the journal
        *path.glob(f"{JOURNAL_NAME}.tmp"),  # the name older versions gave it
    ]
    for stray in strays:
        stray.unlink()
    if strays:
        fsync_dir(path)
        return (
            f"removed {len(strays)} files of an uncommitted patch; the checkpoint is the original"
        )
    return None


def _backup(path: Path, names: list[str]) -> Path:
    backup = path / f"qtui-backup-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 0
    while backup.exists():
        suffix += 1
        backup = path / f"qtui-backup-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    backup.mkdir()
    for name in names:
        source = path / name
        if not source.exists():
            continue
        try:
            os.link(source, backup / name)  # no copy: the renamed-over inode lives on here
        except OSError:
            shutil.copy2(source, backup / name)
    fsync_dir(backup)
    return backup


def patch_checkpoint(
    path: Path, *, dry_run: bool = False, backup: bool = True, on_step: StepHook | None = None
) -> PatchResult:
    """Bring `path` to READY; a no-op when it already is. Raises PatchError when it cannot."""
    path = Path(path)
    step = on_step or (lambda _name: None)
    recovered = None if dry_run else recover_interrupted_patch(path)
    try:
        checkpoint = load_checkpoint(path)
    except NotACheckpoint as error:
        raise PatchError(f"not a checkpoint: {error}", 2) from None
    report = diagnose(checkpoint)
    result = PatchResult(path, False, dry_run, recovered=recovered, before=report)
    if report.verdict is Verdict.IMPOSSIBLE:
        raise PatchError(report.reason, 2)
    if report.verdict is Verdict.READY and not report.notes:
        result.after = report
        return result
    plan = _plan(adopt_unindexed_mtp(checkpoint)[0], report)
    result.actions = plan.actions
    result.files = sorted([*plan.shards, *plan.json_files], key=_rename_rank)
    if dry_run:
        return result
    temps: list[tuple[str, str]] = []
    for shard, specs in plan.shards.items():
        write_safetensors(path / f"{shard}{TEMP_SUFFIX}", specs, plan.shard_metadata[shard])
        temps.append((f"{shard}{TEMP_SUFFIX}", shard))
        step(f"temp:{shard}")
    for name, value in plan.json_files.items():
        write_bytes_durably(path / f"{name}{TEMP_SUFFIX}", _json_bytes(value))
        temps.append((f"{name}{TEMP_SUFFIX}", name))
        step(f"temp:{name}")
    fsync_dir(path)
    temps.sort(key=lambda pair: _rename_rank(pair[1]))
    if backup:
        result.backup_dir = _backup(path, [final for _, final in temps])
        step("backup")
    write_atomic(path / JOURNAL_NAME, _json_bytes({"version": 1, "renames": temps}))
    step("commit")
    for temp, final in temps:
        os.replace(path / temp, path / final)
        step(f"rename:{final}")
    fsync_dir(path)
    (path / JOURNAL_NAME).unlink()
    fsync_dir(path)
    result.changed = True
    result.after = diagnose(load_checkpoint(path))
    return result
