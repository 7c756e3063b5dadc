"""Inspect + patch on a large synthetic checkpoint vs the model card's approach.

The checkpoint: Qwen3.6-27B-sized packed INT4 shards (sparse files: headers are
real, data is holes) plus a model_extra_tensors shard with a real packed
mtp.fc [5120, 10240] in the 0.12.x layout. qtui reads headers and the few fc
tensors, and rewrites only the shard that holds mtp.fc. The card's way loads
every shard's tensors (safetensors numpy) to recompute total_size, dequantizes
with (q - z) * s, and rewrites the fc shard. Each side runs in its own process
so peak RSS is its own.

    .venv/bin/python bench/bench_mtp_patch.py [--gb 10] [--dir /tmp/qtui-bench]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.safetensors_header import (  # noqa: E402
    FileSlice,
    TensorSpec,
    encode_header,
    write_safetensors,
)

HIDDEN = 5120
EXTRA = "model_extra_tensors.safetensors"


def _layer_specs(layer: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """One decoder layer's packed linears (shapes only; the bytes stay holes)."""
    specs: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, out_f, in_f in (
        ("self_attn.q_proj", 12288, HIDDEN),
        ("self_attn.k_proj", 1024, HIDDEN),
        ("self_attn.v_proj", 1024, HIDDEN),
        ("self_attn.o_proj", HIDDEN, 6144),
        ("mlp.gate_proj", 17408, HIDDEN),
        ("mlp.up_proj", 17408, HIDDEN),
        ("mlp.down_proj", HIDDEN, 17408),
    ):
        base = f"model.layers.{layer}.{name}"
        specs[f"{base}.qweight"] = ("I32", (in_f // 8, out_f))
        specs[f"{base}.qzeros"] = ("I32", (in_f // 128, out_f // 8))
        specs[f"{base}.scales"] = ("F16", (in_f // 128, out_f))
    specs[f"model.layers.{layer}.input_layernorm.weight"] = ("F16", (HIDDEN,))
    return specs


def _sparse_shard(path: Path, specs: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    """A real header over a hole: the header encoder only needs each tensor's length."""
    sizes = {"I32": 4, "F16": 2}
    tensors = {
        name: TensorSpec(
            dtype, shape, FileSlice(Path("/dev/zero"), 0, sizes[dtype] * int(np.prod(shape)))
        )
        for name, (dtype, shape) in specs.items()
    }
    header = encode_header(tensors, {"format": "pt"})
    total = sum(spec.nbytes for spec in tensors.values())
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(len(header) + total)  # no disk used, reads as zeros
    return total


def build(directory: Path, target_gb: float) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    per_layer = sum({"I32": 4, "F16": 2}[d] * int(np.prod(s)) for d, s in _layer_specs(0).values())
    layers = max(1, int(target_gb * 1e9 // per_layer))
    shards = max(1, layers // 8)
    weight_map: dict[str, str] = {}
    for shard_no in range(shards):
        name = f"model-{shard_no + 1:05d}-of-{shards:05d}.safetensors"
        specs: dict[str, tuple[str, tuple[int, ...]]] = {}
        for layer in range(shard_no * layers // shards, (shard_no + 1) * layers // shards):
            specs |= _layer_specs(layer)
        _sparse_shard(directory / name, specs)
        weight_map |= dict.fromkeys(specs, name)
    rng = np.random.default_rng(0)
    packed = {
        "mtp.fc.qweight": rng.integers(-(2**31), 2**31, (2 * HIDDEN // 8, HIDDEN), dtype=np.int32),
        "mtp.fc.qzeros": np.full((2 * HIDDEN // 128, HIDDEN // 8), 0x77777777, dtype=np.int32),
        "mtp.fc.scales": (rng.random((2 * HIDDEN // 128, HIDDEN)) * 0.01).astype(np.float16),
        "mtp.norm.weight": np.ones(HIDDEN, dtype=np.float16),
        "mtp.layers.0.input_layernorm.weight": np.ones(HIDDEN, dtype=np.float16),
    }
    write_safetensors(
        directory / EXTRA,
        {k: TensorSpec.from_array(v) for k, v in packed.items()},
        {"format": "pt"},
    )
    weight_map |= dict.fromkeys(packed, EXTRA)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    quant = {
        "bits": 4, "group_size": 128, "sym": True, "quant_method": "auto-round",
        "packing_format": "auto_round:auto_gptq", "block_name_to_quantize": ["mtp.layers"],
        "extra_config": {},
    }  # fmt: skip
    config = {
        "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text",
        "hidden_size": HIDDEN, "num_hidden_layers": layers, "mtp_num_hidden_layers": 1,
        "quantization_config": quant,
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "quantization_config.json").write_text(json.dumps(quant))
    return directory


def run_qtui(directory: Path) -> dict[str, float]:
    from backend.mtp_doctor import diagnose_checkpoint
    from backend.mtp_patch import patch_checkpoint

    start = time.perf_counter()
    report = diagnose_checkpoint(directory)
    inspect_s = time.perf_counter() - start
    result = patch_checkpoint(directory, backup=True)
    assert result.after is not None and result.after.verdict == 0, result.after
    return {
        "inspect_s": inspect_s,
        "total_s": time.perf_counter() - start,
        "verdict": report.verdict,
    }


def run_card(directory: Path) -> dict[str, float]:
    """The model card's way, in numpy: load every tensor to sum sizes, (q - z) * s, save."""
    from safetensors.numpy import load_file, save_file

    start = time.perf_counter()
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(str(directory / shard))
        total += sum(array.nbytes for array in tensors.values())
        del tensors
    extra = load_file(str(directory / EXTRA))
    words = extra.pop("mtp.fc.qweight").view(np.uint32)
    q = np.stack([(words >> (4 * k)) & 0xF for k in range(8)], axis=1).reshape(-1, words.shape[1])
    zwords = extra.pop("mtp.fc.qzeros").view(np.uint32)
    z = np.stack([(zwords >> (4 * k)) & 0xF for k in range(8)], axis=2).reshape(zwords.shape[0], -1)
    scales = extra.pop("mtp.fc.scales").astype(np.float32)
    groups = np.arange(q.shape[0]) // 128
    weight = ((q.astype(np.float32) - z[groups]) * scales[groups]).T.astype(np.float16)
    extra["mtp.fc.weight"] = np.ascontiguousarray(weight)  # numpy has no bf16: fp16 here
    save_file(extra, str(directory / EXTRA))
    total += weight.nbytes - words.nbytes - zwords.nbytes - scales.nbytes // 2
    index["metadata"]["total_size"] = total
    index_path.write_text(json.dumps(index))
    return {"total_s": time.perf_counter() - start}


def _child(mode: str, directory: Path) -> None:
    result = run_qtui(directory) if mode == "qtui" else run_card(directory)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=10.0, help="checkpoint size (sparse)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/qtui-bench-mtp"))
    parser.add_argument("--child", choices=("qtui", "card"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.dir)
        return 0
    results = {}
    for mode in ("qtui", "card"):
        directory = build(args.dir / mode, args.gb)
        size = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--dir", str(directory)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{mode:5s}: {size / 1e9:.1f} GB checkpoint, {results[mode]}")
    qtui, card = results["qtui"], results["card"]
    print(
        f"time: qtui {qtui['total_s']:.2f} s (inspect {qtui['inspect_s']:.3f} s) vs card "
        f"{card['total_s']:.2f} s -> {card['total_s'] / qtui['total_s']:.1f}x faster; "
        f"peak RSS qtui {qtui['peak_rss_mb']:.0f} MB vs card {card['peak_rss_mb']:.0f} MB -> "
        f"{card['peak_rss_mb'] / qtui['peak_rss_mb']:.1f}x less"
    )
    shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
