"""Build a tiny Qwen3-style checkpoint locally: no hub, no torch, seconds.

The weights are random (numpy), the tokenizer is a byte-level BPE trained on
Python's own standard library sources, the chat template is Qwen's. vLLM
serves it like any other checkpoint, which is all the tests and the CPU demo
need. head_dim is 32 because vLLM's CPU attention only takes 32, 64, 80, ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Qwen's ChatML layout; enable_thinking=False pre-fills an empty think block as Qwen3 does.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('\n') %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + text + '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\n\n</think>\n\n' }}{%- endif %}{%- endif %}"
)


@dataclass(frozen=True)
class TinyShape:
    vocab_size: int = 2048
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 2048


def _training_text(limit_bytes: int = 3_000_000) -> Iterator[str]:
    """Python's stdlib sources: local, plentiful, the same on every machine."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        total += len(text)
        yield text
        if total >= limit_bytes:
            return


def build_tokenizer(vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    return tokenizer


def _random_weights(shape: TinyShape, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hidden, inter, heads, kv_heads, head_dim = (
        shape.hidden_size,
        shape.intermediate_size,
        shape.num_attention_heads,
        shape.num_key_value_heads,
        shape.head_dim,
    )

    def linear(out_features: int, in_features: int) -> np.ndarray:
        return (rng.standard_normal((out_features, in_features)) * 0.05).astype(np.float32)

    def norm(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    weights = {
        "model.embed_tokens.weight": linear(shape.vocab_size, hidden),
        "model.norm.weight": norm(hidden),
        "lm_head.weight": linear(shape.vocab_size, hidden),
    }
    for layer in range(shape.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        weights |= {
            f"{prefix}.input_layernorm.weight": norm(hidden),
            f"{prefix}.post_attention_layernorm.weight": norm(hidden),
            f"{prefix}.self_attn.q_proj.weight": linear(heads * head_dim, hidden),
            f"{prefix}.self_attn.k_proj.weight": linear(kv_heads * head_dim, hidden),
            f"{prefix}.self_attn.v_proj.weight": linear(kv_heads * head_dim, hidden),
            f"{prefix}.self_attn.o_proj.weight": linear(hidden, heads * head_dim),
            f"{prefix}.self_attn.q_norm.weight": norm(head_dim),
            f"{prefix}.self_attn.k_norm.weight": norm(head_dim),
            f"{prefix}.mlp.gate_proj.weight": linear(inter, hidden),
            f"{prefix}.mlp.up_proj.weight": linear(inter, hidden),
            f"{prefix}.mlp.down_proj.weight": linear(hidden, inter),
        }
    return weights


def _model_config(shape: TinyShape, tokenizer: Tokenizer) -> dict[str, object]:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "torch_dtype": "float32",
        "bos_token_id": tokenizer.token_to_id("<|endoftext|>"),
        "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
    }


@contextlib.contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """A work dir beside `out_dir` that replaces it only if the block finishes."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield work
        work.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def write_tokenizer_files(directory: Path, vocab_size: int, max_length: int) -> Tokenizer:
    """Train the tokenizer; write tokenizer.json, tokenizer_config.json, generation_config.json."""
    tokenizer = build_tokenizer(vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|im_end|>")
    (directory / "generation_config.json").write_text(
        json.dumps({"eos_token_id": eos, "do_sample": False}, indent=2)
    )
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": max_length,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "bos_token": None,
                "unk_token": None,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
    )
    return tokenizer


def build_tiny_model(out_dir: Path, shape: TinyShape | None = None, seed: int = 0) -> Path:
    """Write the checkpoint to `out_dir` atomically (built beside it, then renamed).

    An existing complete model is reused; returns the model directory.
    """
    shape = shape or TinyShape()
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir
    with staged_directory(out_dir) as work:
        tokenizer = write_tokenizer_files(work, shape.vocab_size, shape.max_position_embeddings)
        config = _model_config(shape, tokenizer)
        (work / "config.json").write_text(json.dumps(config, indent=2))
        save_file(_random_weights(shape, seed), str(work / "model.safetensors"))
    return out_dir
