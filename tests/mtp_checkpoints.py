"""The checkpoint kinds the MTP doctor judges, made from a working tiny Qwen3.5.

Each helper rewrites a copy in place, the way a quantizer or a hand edit
would have left it. The packed mtp.fc is the working fc itself, packed the
auto_round:auto_gptq way (symmetric INT4, stored zero 7), so that a vLLM that
loads it quantized, and the patch that dequantizes it, both draft as well as
the original: what the tests measure is whether vLLM uses it, not whether
the packing lost accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from backend.checkpoint import INDEX_NAME
from backend.safetensors_header import (
    TensorSpec,
    read_header,
    read_tensor,
    write_safetensors_atomic,
)
from backend.vllm_quant_rules import FC

GROUP_SIZE = 128
STORED_ZERO = 7
"""auto_gptq packing stores the symmetric zero 8 minus one."""


def copy_checkpoint(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def pack_int4_gptq(
    weight: np.ndarray, group_size: int = GROUP_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[out, in] float -> qweight int32 [in/8, out], qzeros int32 [groups, out/8], scales fp16."""
    out_features, in_features = weight.shape
    groups = in_features // group_size
    by_group = weight.T.reshape(groups, group_size, out_features)
    scales = (np.abs(by_group).max(axis=1) / 7.0).astype(np.float16)
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(by_group / scales[:, None, :].astype(np.float32)), -8, 7) + 8
    q = q.reshape(in_features, out_features).astype(np.uint32)
    qweight = np.zeros((in_features // 8, out_features), dtype=np.uint32)
    for nibble in range(8):
        qweight |= q[nibble::8] << np.uint32(4 * nibble)
    qzeros = np.zeros((groups, out_features // 8), dtype=np.uint32)
    for nibble in range(8):
        qzeros |= np.uint32(STORED_ZERO << (4 * nibble))
    return qweight.view(np.int32), qzeros.view(np.int32), scales


def _rewrite_fc(checkpoint: Path, new_tensors: dict[str, TensorSpec]) -> None:
    """Replace every mtp.fc tensor by `new_tensors` (none: remove fc) in its shard and index."""
    index_path = checkpoint / INDEX_NAME
    index = json.loads(index_path.read_text())
    weight_map: dict[str, str] = index["weight_map"]
    shard = weight_map[f"{FC}.weight"]
    header = read_header(checkpoint / shard)
    specs = {
        name: TensorSpec.from_file(header, name)
        for name in header.tensors
        if not name.startswith(f"{FC}.")
    }
    specs |= new_tensors
    write_safetensors_atomic(checkpoint / shard, specs, header.metadata)
    index["weight_map"] = {
        name: file for name, file in weight_map.items() if not name.startswith(f"{FC}.")
    } | dict.fromkeys(new_tensors, shard)
    index_path.write_text(json.dumps(index, indent=2))


def set_fc_coverage(checkpoint: Path, covered: bool) -> None:
    """Drop the fc's 16-bit entry; `covered` puts mtp.fc inside block_name_to_quantize."""
    for name in ("config.json", "quantization_config.json"):
        path = checkpoint / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        quant = data.get("quantization_config", data) if name == "config.json" else data
        if name == "config.json" and "quantization_config" not in data:
            continue
        (quant.get("extra_config") or {}).pop(FC, None)
        blocks = [block for block in quant.get("block_name_to_quantize") or [] if block != FC]
        quant["block_name_to_quantize"] = [*blocks, FC] if covered else blocks
        path.write_text(json.dumps(data, indent=2))


def pack_fc(checkpoint: Path, *, covered: bool) -> Path:
    """mtp.fc packed INT4; `covered` or not by the quant config (a quantized checkpoint)."""
    index = json.loads((checkpoint / INDEX_NAME).read_text())
    shard = index["weight_map"][f"{FC}.weight"]
    weight = bf16_bits_to_float32(read_tensor(checkpoint / shard, f"{FC}.weight"))
    qweight, qzeros, scales = pack_int4_gptq(weight)
    _rewrite_fc(
        checkpoint,
        {
            f"{FC}.qweight": TensorSpec.from_array(qweight),
            f"{FC}.qzeros": TensorSpec.from_array(qzeros),
            f"{FC}.scales": TensorSpec.from_array(scales),
        },
    )
    set_fc_coverage(checkpoint, covered)
    return checkpoint


def drop_fc(checkpoint: Path) -> Path:
    """mtp.fc gone, the rest of the MTP head kept (what a careless export leaves)."""
    _rewrite_fc(checkpoint, {})
    return checkpoint
