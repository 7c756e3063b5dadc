"""A tiny Qwen3.5-shaped checkpoint with an MTP head: no hub, no torch, seconds.

Text-only (`Qwen3_5ForCausalLM`, model_type `qwen3_5_text`), the layer mix of
the real model (three Gated DeltaNet layers to one full-attention layer, gated
q_proj of twice the heads), and the `mtp.*` tensors that transformers ignores
on load but AutoRound copies and vLLM's MTP drafter reads. Sizes are chosen so
real AutoRound W4A16 (group 128) quantizes it on a CPU in seconds: every
quantized linear has 128 or 256 inputs, and the MLP's intermediate size is 2H
so `mtp.layers.0.mlp.down_proj` packs to exactly the shapes a packed `mtp.fc`
has ([2H/8, H] and friends), which the tests use to build 0.12.x-style heads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.safetensors_header import TensorSpec, float32_to_bf16_bits, write_safetensors
from backend.tinymodel import _training_text, staged_directory, write_tokenizer_files

INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TinyQwen35Shape:
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    full_attention_interval: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    linear_num_key_heads: int = 2
    linear_num_value_heads: int = 4
    linear_key_head_dim: int = 32
    linear_value_head_dim: int = 32
    linear_conv_kernel_dim: int = 4
    mtp_num_hidden_layers: int = 1
    max_position_embeddings: int = 2048

    @property
    def layer_types(self) -> list[str]:
        interval = self.full_attention_interval
        return [
            "full_attention" if (layer + 1) % interval == 0 else "linear_attention"
            for layer in range(self.num_hidden_layers)
        ]


class _Weights:
    """Random weights by name; norms follow Qwen3.5's (1 + w) convention, so zeros."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors: dict[str, np.ndarray] = {}

    def linear(self, name: str, out_features: int, in_features: int) -> None:
        scale = 1.0 / np.sqrt(in_features)
        values = self.rng.standard_normal((out_features, in_features)) * scale
        self.tensors[name] = values.astype(np.float32)

    def vector(self, name: str, size: int, value: float = 0.0) -> None:
        self.tensors[name] = np.full(size, value, dtype=np.float32)


def _attention(weights: _Weights, prefix: str, shape: TinyQwen35Shape) -> None:
    hidden, head_dim = shape.hidden_size, shape.head_dim
    heads, kv_heads = shape.num_attention_heads, shape.num_key_value_heads
    # q_proj carries the output gate too: twice the heads.
    weights.linear(f"{prefix}.self_attn.q_proj.weight", heads * head_dim * 2, hidden)
    weights.linear(f"{prefix}.self_attn.k_proj.weight", kv_heads * head_dim, hidden)
    weights.linear(f"{prefix}.self_attn.v_proj.weight", kv_heads * head_dim, hidden)
    weights.linear(f"{prefix}.self_attn.o_proj.weight", hidden, heads * head_dim)
    weights.vector(f"{prefix}.self_attn.q_norm.weight", head_dim)
    weights.vector(f"{prefix}.self_attn.k_norm.weight", head_dim)


def _linear_attention(weights: _Weights, prefix: str, shape: TinyQwen35Shape) -> None:
    hidden = shape.hidden_size
    key_dim = shape.linear_key_head_dim * shape.linear_num_key_heads
    value_dim = shape.linear_value_head_dim * shape.linear_num_value_heads
    conv_dim = key_dim * 2 + value_dim
    base = f"{prefix}.linear_attn"
    weights.linear(f"{base}.in_proj_qkv.weight", conv_dim, hidden)
    weights.linear(f"{base}.in_proj_z.weight", value_dim, hidden)
    weights.linear(f"{base}.in_proj_b.weight", shape.linear_num_value_heads, hidden)
    weights.linear(f"{base}.in_proj_a.weight", shape.linear_num_value_heads, hidden)
    weights.linear(f"{base}.out_proj.weight", hidden, value_dim)
    conv = weights.rng.standard_normal((conv_dim, 1, shape.linear_conv_kernel_dim)) * 0.3
    weights.tensors[f"{base}.conv1d.weight"] = conv.astype(np.float32)
    weights.vector(f"{base}.dt_bias", shape.linear_num_value_heads, 1.0)
    a_log = np.log(weights.rng.uniform(1.0, 16.0, shape.linear_num_value_heads))
    weights.tensors[f"{base}.A_log"] = a_log.astype(np.float32)
    weights.vector(f"{base}.norm.weight", shape.linear_value_head_dim, 1.0)


def _decoder_layer(weights: _Weights, prefix: str, kind: str, shape: TinyQwen35Shape) -> None:
    hidden, inter = shape.hidden_size, shape.intermediate_size
    weights.vector(f"{prefix}.input_layernorm.weight", hidden)
    weights.vector(f"{prefix}.post_attention_layernorm.weight", hidden)
    if kind == "full_attention":
        _attention(weights, prefix, shape)
    else:
        _linear_attention(weights, prefix, shape)
    weights.linear(f"{prefix}.mlp.gate_proj.weight", inter, hidden)
    weights.linear(f"{prefix}.mlp.up_proj.weight", inter, hidden)
    weights.linear(f"{prefix}.mlp.down_proj.weight", hidden, inter)


def random_weights(shape: TinyQwen35Shape, seed: int = 0) -> tuple[dict, dict]:
    """(main tensors, mtp tensors), float32; the checkpoint stores them as BF16."""
    weights = _Weights(seed)
    hidden = shape.hidden_size
    weights.linear("model.embed_tokens.weight", shape.vocab_size, hidden)
    for layer, kind in enumerate(shape.layer_types):
        _decoder_layer(weights, f"model.layers.{layer}", kind, shape)
    weights.vector("model.norm.weight", hidden)
    weights.linear("lm_head.weight", shape.vocab_size, hidden)
    main = weights.tensors
    weights.tensors = {}
    weights.linear("mtp.fc.weight", hidden, 2 * hidden)
    weights.vector("mtp.pre_fc_norm_embedding.weight", hidden)
    weights.vector("mtp.pre_fc_norm_hidden.weight", hidden)
    weights.vector("mtp.norm.weight", hidden)
    for layer in range(shape.mtp_num_hidden_layers):
        _decoder_layer(weights, f"mtp.layers.{layer}", "full_attention", shape)
    return main, weights.tensors


def model_config(
    shape: TinyQwen35Shape, bos_id: int | None, eos_id: int | None
) -> dict[str, object]:
    return {
        "architectures": ["Qwen3_5ForCausalLM"],
        "model_type": "qwen3_5_text",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "linear_conv_kernel_dim": shape.linear_conv_kernel_dim,
        "linear_key_head_dim": shape.linear_key_head_dim,
        "linear_value_head_dim": shape.linear_value_head_dim,
        "linear_num_key_heads": shape.linear_num_key_heads,
        "linear_num_value_heads": shape.linear_num_value_heads,
        "layer_types": shape.layer_types,
        "full_attention_interval": shape.full_attention_interval,
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10_000_000.0,
            "partial_rotary_factor": 0.25,
        },
        "attn_output_gate": True,
        "mtp_num_hidden_layers": shape.mtp_num_hidden_layers,
        "mtp_use_dedicated_embeddings": False,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "dtype": "bfloat16",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }


def _bf16_specs(tensors: dict[str, np.ndarray]) -> dict[str, TensorSpec]:
    return {
        name: TensorSpec.from_array(float32_to_bf16_bits(values), "BF16")
        for name, values in sorted(tensors.items())
    }


def write_calibration_jsonl(path: Path, samples: int = 64, chars: int = 1200) -> Path:
    """A local calibration file (`{"text": ...}` per line) cut from Python's stdlib sources."""
    lines = []
    for text in _training_text(limit_bytes=samples * chars * 2):
        for start in range(0, len(text) - chars, chars):
            lines.append(json.dumps({"text": text[start : start + chars]}))
            if len(lines) == samples:
                break
        if len(lines) == samples:
            break
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def build_tiny_qwen35(out_dir: Path, shape: TinyQwen35Shape | None = None, seed: int = 0) -> Path:
    """Write the checkpoint (two shards + index, MTP in the second) atomically; reuse if there."""
    shape = shape or TinyQwen35Shape()
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / INDEX_NAME).is_file():
        return out_dir
    with staged_directory(out_dir) as work:
        tokenizer = write_tokenizer_files(work, shape.vocab_size, shape.max_position_embeddings)
        bos = tokenizer.token_to_id("<|endoftext|>")
        eos = tokenizer.token_to_id("<|im_end|>")
        (work / "config.json").write_text(json.dumps(model_config(shape, bos, eos), indent=2))
        main, mtp = random_weights(shape, seed)
        head = {"lm_head.weight": main.pop("lm_head.weight")}
        shards = {
            "model-00001-of-00002.safetensors": _bf16_specs(main),
            "model-00002-of-00002.safetensors": _bf16_specs(head | mtp),
        }
        weight_map: dict[str, str] = {}
        total = 0
        for shard, specs in shards.items():
            write_safetensors(work / shard, specs, {"format": "pt"})
            weight_map |= dict.fromkeys(specs, shard)
            total += sum(spec.nbytes for spec in specs.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (work / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return out_dir
