"""vLLM's quantization rules (INC / auto-round) and the packed INT4 layout it loads.

Which linear vLLM builds quantized, which fused siblings it refuses, from which
version it builds mtp.fc with the quant config, and how an auto_gptq-packed
tensor is laid out. Mirrored here, apart from the doctor's verdict, because
they follow vLLM releases while the verdict follows what qtui asks of a
checkpoint; the patch applies the same rules when it rewrites the configs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.checkpoint import Checkpoint

FC = "mtp.fc"
_REGEX_CHARS = set(r"*+?^$()[]{}|\\")
UNQUANTIZED_ENTRY = {"bits": 16, "data_type": "fp"}
QUANTIZED_FC_SINCE = (0, 25)
"""vLLM builds mtp.fc with the quant config (and so loads a packed fc) from 0.25 on."""


def version_tuple(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of a vLLM version string such as 0.32.0+cpu; None when unknown."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def loads_quantized_fc(vllm_version: str | None) -> bool:
    """Does this vLLM build a covered mtp.fc quantized? Unknown versions: assume current."""
    parsed = version_tuple(vllm_version)
    return parsed is None or parsed >= QUANTIZED_FC_SINCE


# --- which layer vLLM builds quantized -------------------------------------------------


def block_names(quant: dict[str, Any]) -> list[str]:
    value = quant.get("block_name_to_quantize")
    if not value:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value]


def vllm_layer_bits(layer: str, quant: dict[str, Any] | None) -> int:
    """The bits vLLM's INC config gives the linear `layer` (16 = built unquantized).

    Mirrors vllm/model_executor/layers/quantization/inc: an extra_config entry
    of >= 16 bits for the prefix wins, then an exact entry, then a suffix match,
    then block_name_to_quantize, then regex entries, then the global bits.
    """
    if quant is None:
        return 16
    bits = int(quant.get("bits", 4))
    extra: dict[str, dict[str, Any]] = quant.get("extra_config") or {}
    for key in (layer, f"model.{layer}"):
        if key in extra and int(extra[key].get("bits", 16)) >= 16:
            return 16
    if layer in extra:
        return int(extra[layer].get("bits", bits))
    for key, entry in extra.items():
        if layer.endswith(f".{key}"):
            return int(entry.get("bits", bits))
    quantized = layer != "lm_head"
    blocks = block_names(quant)
    if blocks:
        quantized = any(layer.startswith(block) for block in blocks)
    for pattern, entry in extra.items():
        if not any(char in _REGEX_CHARS for char in pattern):
            continue
        try:
            if re.search(pattern, layer):
                return int(entry.get("bits", bits if quantized else 16))
        except re.error:
            continue
    return bits if quantized else 16


def packed_layers(checkpoint: Checkpoint) -> list[str]:
    return sorted(
        name[: -len(".qweight")] for name in checkpoint.weight_map if name.endswith(".qweight")
    )


def uncovered_packed_layers(checkpoint: Checkpoint, quant: dict[str, Any] | None) -> list[str]:
    """Packed layers vLLM would build unquantized: their qweight cannot load."""
    return [
        layer
        for layer in packed_layers(checkpoint)
        if layer != FC and vllm_layer_bits(layer, quant) >= 16
    ]


# --- fused siblings --------------------------------------------------------------------

# vLLM loads these as one fused linear (qkv_proj, gate_up_proj, in_proj_qkvz,
# in_proj_ba) and refuses to build it when the siblings resolve to different
# quant configs: "Fused module ... requires consistent quant config".
FUSED_SIBLINGS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),
    ("gate_proj", "up_proj"),
    ("in_proj_qkv", "in_proj_z"),
    ("in_proj_b", "in_proj_a"),
)


@dataclass
class FusedGroup:
    """Siblings of one fused linear: how each is stored and the bits vLLM gives it."""

    prefix: str
    storage: dict[str, str]
    """Member -> "packed" (qweight) or "dense" (weight)."""
    bits: dict[str, int]

    @property
    def stored_differently(self) -> bool:
        return len(set(self.storage.values())) > 1

    @property
    def consistent(self) -> bool:
        return not self.stored_differently and len(set(self.bits.values())) == 1

    def describe(self) -> str:
        members = ", ".join(
            f"{member} {kind} {self.bits[member]}-bit" for member, kind in self.storage.items()
        )
        return f"{self.prefix}: {members}"


def linear_storage(checkpoint: Checkpoint) -> dict[str, str]:
    """Layer -> "packed" or "dense", from tensor names alone."""
    storage: dict[str, str] = {}
    for name in checkpoint.weight_map:
        if name.endswith(".qweight"):
            storage[name[: -len(".qweight")]] = "packed"
        elif name.endswith(".weight"):
            storage.setdefault(name[: -len(".weight")], "dense")
    return storage


def inconsistent_fused_groups(
    checkpoint: Checkpoint, quant: dict[str, Any] | None
) -> list[FusedGroup]:
    """Fused siblings vLLM would refuse to build: stored or configured differently."""
    members_by_group: dict[tuple[str, int], dict[str, str]] = {}
    for layer, kind in linear_storage(checkpoint).items():
        prefix, _, member = layer.rpartition(".")
        for number, siblings in enumerate(FUSED_SIBLINGS):
            if member in siblings:
                members_by_group.setdefault((prefix, number), {})[member] = kind
    found = []
    for (prefix, number), members in sorted(members_by_group.items()):
        if len(members) < 2:
            continue
        ordered = {
            member: members[member] for member in FUSED_SIBLINGS[number] if member in members
        }
        bits = {member: vllm_layer_bits(f"{prefix}.{member}", quant) for member in ordered}
        group = FusedGroup(prefix, ordered, bits)
        if not group.consistent:
            found.append(group)
    return found


# --- the packed INT4 layout (auto_gptq) ------------------------------------------------


def unpack_int4_rows(packed: np.ndarray) -> np.ndarray:
    """int32 [r, c] -> [8r, c]: nibble k of row r is row 8r+k (qweight layout)."""
    words = packed.astype(np.uint32, copy=False)
    nibbles = np.stack([(words >> (4 * k)) & 0xF for k in range(8)], axis=1)
    return nibbles.reshape(packed.shape[0] * 8, packed.shape[1]).astype(np.int32)


def unpack_int4_cols(packed: np.ndarray) -> np.ndarray:
    """int32 [r, c] -> [r, 8c]: nibble k of column c is column 8c+k (qzeros layout)."""
    words = packed.astype(np.uint32, copy=False)
    nibbles = np.stack([(words >> (4 * k)) & 0xF for k in range(8)], axis=2)
    return nibbles.reshape(packed.shape[0], packed.shape[1] * 8).astype(np.int32)


def fc_layer_config(quant: dict[str, Any] | None) -> tuple[int, int, bool]:
    """bits, group size, sym the packed mtp.fc was written with (its extra_config wins)."""
    quant = quant or {}
    entry = (quant.get("extra_config") or {}).get(FC) or {}
    bits = int(entry.get("bits", quant.get("bits", 4)))
    group = int(entry.get("group_size", quant.get("group_size", 128)))
    sym = bool(entry.get("sym", quant.get("sym", True)))
    if bits >= 16:  # a patched config marks fc unquantized; the packed data still says 4
        bits = int(quant.get("bits", 4))
    return bits, group, sym


def zero_offset(stored_zero: int | None, sym: bool, packing_format: str) -> int:
    """What to add to a stored zero: the data decides for symmetric 4-bit, else the format."""
    if sym and stored_zero == 7:
        return 1
    if sym and stored_zero == 8:
        return 0
    return 1 if packing_format.endswith("auto_gptq") else 0
