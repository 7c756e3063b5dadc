"""Will this serve profile fit? KV-cache arithmetic done before launch, as vLLM does it.

Reads only config.json and safetensors headers. The figures follow vLLM 0.32's own
sizing (v1/core/kv_cache_utils.py, platforms/interface.py, v1/kv_cache_interface.py):

- Full-attention layers cost 2 x KV heads x head_dim x dtype bytes per token; a
  block holds `block_size` tokens (CPU 128, CUDA 16).
- Gated DeltaNet (linear-attention) layers keep a fixed state per sequence: a
  conv state (conv_dim x (kernel - 1 + draft tokens)) and a recurrent state
  (value heads x value dim x key dim). On a hybrid model vLLM raises the block
  size until an attention page holds a whole state, then pads the state's page
  to the attention page, so every layer's page is the same size.
- Layers are grouped by kind; every group has the same number of layers (the
  smaller kind's count, or the larger one's when they are within 1.5x), and a
  block spans one page of each layer of a group. Each request takes
  ceil(len / block_size) blocks per attention group and 1 + draft tokens blocks
  (2 + draft tokens with prefix caching, "align" mode) per state group. Prefix caching
  is on by default for these models in vLLM 0.32, off in 0.26 (EngineFacts).
- The MTP drafter's attention layer joins the full-attention layers.
- vLLM logs `KV cache size: int(num_blocks / blocks_per_request x max_model_len)`
  and refuses to start unless one max_model_len request fits beside the null block.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from backend.config import ServeProfile
from backend.engine import Engine, EngineError, engine_facts, resolve_engine, vllm_package_dir
from backend.safetensors_header import SafetensorsError, read_header

if TYPE_CHECKING:
    from backend.server_state import ServerRecord
    from backend.telemetry_checks import StartupReadout

GIB = 1024**3
Platform = Literal["cpu", "cuda"]

GPU_MARGIN_BYTES = 2 * GIB
"""Held back from a GPU budget for what qtui cannot see before launch: the
activation peak of a max_num_batched_tokens forward pass and non-torch memory."""
CUDA_GRAPH_MARGIN_BYTES = 1 * GIB
"""Added to the margin when vLLM captures CUDA graphs (not enforce_eager / NONE)."""
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
"""vLLM's default --gpu-memory-utilization."""

# Block sizes and kernel block alignment, as each platform chooses them.
_DEFAULT_BLOCK = {"cpu": 128, "cuda": 16}
_KERNEL_BLOCK = {"cpu": 32, "cuda": 16}

_DTYPE_BYTES = {
    "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1,
}  # fmt: skip
EXACT_KV_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2")
"""KV dtypes whose page size is plain elements x bytes (others pack scales: not predicted)."""

_VISION_PREFIXES = (
    "model.visual.", "visual.", "model.vision_tower.", "vision_tower.", "model.vision_model.",
    "vision_model.", "model.multi_modal_projector.", "multi_modal_projector.", "mm_projector.",
)  # fmt: skip
_MTP_PREFIXES = ("mtp.", "model.mtp.")
_FLOAT_TENSORS = {"F32": 4, "F16": 2, "BF16": 2}


def human_bytes(value: int | None) -> str:
    """1.50 GiB, 256.00 MiB, 68.00 KiB, 512 B."""
    if value is None:
        return "-"
    for unit, scale in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value} B"


class FitError(ValueError):
    """The checkpoint cannot be read for a prediction; the message says why."""


# -- the model ------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """What the KV cache depends on, from config.json (text_config when multimodal)."""

    full_attention_layers: int
    linear_attention_layers: int = 0
    num_kv_heads: int = 1
    head_dim: int = 128
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel_dim: int = 4
    mtp_layers: int = 0
    max_position_embeddings: int | None = None
    config_dtype: str = "bfloat16"
    mamba_ssm_dtype: str | None = None
    """The recurrent state's dtype when the config names one (Qwen3.5's mamba_ssm_dtype)."""

    @property
    def is_hybrid(self) -> bool:
        return self.linear_attention_layers > 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        text = config.get("text_config") or config
        layers = int(text["num_hidden_layers"])
        types = text.get("layer_types")
        if not types and text.get("full_attention_interval") and "linear_num_value_heads" in text:
            interval = int(text["full_attention_interval"])
            types = [
                "full_attention" if (i + 1) % interval == 0 else "linear_attention"
                for i in range(layers)
            ]
        types = list(types or ["full_attention"] * layers)[:layers]
        linear = sum(1 for kind in types if kind == "linear_attention")
        heads = int(text.get("num_attention_heads", 1))
        head_dim = text.get("head_dim") or int(text["hidden_size"]) // heads
        dtype = text.get("dtype") or text.get("torch_dtype") or config.get("dtype")
        dtype = dtype or config.get("torch_dtype") or "bfloat16"
        mtp = text.get("mtp_num_hidden_layers", text.get("num_nextn_predict_layers", 0))
        return cls(
            full_attention_layers=layers - linear,
            linear_attention_layers=linear,
            num_kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            linear_num_key_heads=int(text.get("linear_num_key_heads", 0)),
            linear_num_value_heads=int(text.get("linear_num_value_heads", 0)),
            linear_key_head_dim=int(text.get("linear_key_head_dim", 0)),
            linear_value_head_dim=int(text.get("linear_value_head_dim", 0)),
            linear_conv_kernel_dim=int(text.get("linear_conv_kernel_dim", 4)),
            mtp_layers=int(mtp or 0),
            max_position_embeddings=text.get("max_position_embeddings"),
            config_dtype=str(dtype).replace("torch.", ""),
            mamba_ssm_dtype=text.get("mamba_ssm_dtype"),
        )


@dataclass(frozen=True)
class WeightBytes:
    """Checkpoint bytes by part, float tensors counted at the dtype vLLM loads them in."""

    language: int
    mtp: int = 0
    vision: int = 0

    def loaded(self, *, mtp: bool, language_model_only: bool) -> int:
        return (
            self.language + (self.mtp if mtp else 0) + (0 if language_model_only else self.vision)
        )


def _part(name: str) -> str:
    if name.startswith(_MTP_PREFIXES):
        return "mtp"
    if name.startswith(_VISION_PREFIXES):
        return "vision"
    return "language"


def checkpoint_weights(model_dir: Path, model_dtype_bytes: int) -> WeightBytes:
    """Sum the safetensors headers (no tensor is read) by part."""
    parts = {"language": 0, "mtp": 0, "vision": 0}
    shards = sorted(Path(model_dir).glob("*.safetensors"))
    if not shards:
        raise FitError(f"{model_dir}: no *.safetensors files")
    for shard in shards:
        try:
            header = read_header(shard)
        except SafetensorsError as error:
            raise FitError(str(error)) from None
        for info in header.tensors.values():
            size = info.nbytes
            if info.dtype in _FLOAT_TENSORS:
                size = size // _FLOAT_TENSORS[info.dtype] * model_dtype_bytes
            parts[_part(info.name)] += size
    return WeightBytes(**parts)


# -- profile settings vLLM resolves ---------------------------------------
def parse_max_model_len(value: int | str | None) -> int | None:
    """vLLM's forms: 4096, 1k (1000), 1K (1024), 25.6k; None for auto / -1 / unset."""
    if value is None:
        return None
    text = str(value).strip()
    if text in ("-1", "auto", ""):
        return None
    if text.isdigit():
        return int(text)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgtKMGT])", text)
    if not match:
        raise FitError(f"max_model_len {value!r}: write a number, 1k, 1K, 25.6k or auto")
    number, suffix = match.groups()
    if suffix.islower():
        return int(float(number) * 10 ** (3 * "kmgt".index(suffix) + 3))
    return int(number) * 2 ** (10 * "KMGT".index(suffix) + 10)


def model_dtype_bytes(profile_dtype: str, config_dtype: str) -> int:
    """--dtype auto keeps the checkpoint's dtype, except float32, which becomes bf16."""
    if profile_dtype != "auto":
        return _DTYPE_BYTES.get(profile_dtype, 2)
    size = _DTYPE_BYTES.get(config_dtype, 2)
    return 2 if size == 4 else size


def kv_dtype_bytes(kv_cache_dtype: str, model_bytes: int) -> int | None:
    if kv_cache_dtype == "auto":
        return model_bytes
    return _DTYPE_BYTES.get(kv_cache_dtype) if kv_cache_dtype in EXACT_KV_DTYPES else None


@functools.cache
def cpu_has_avx512_bf16() -> bool:
    """vLLM's CPU backend keeps Gated DeltaNet's recurrent state in float32 on such CPUs."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


# -- the layout vLLM builds ------------------------------------------------
@dataclass(frozen=True)
class KvLayout:
    """Blocks as vLLM lays them out for one rank."""

    block_size: int
    page_bytes: int
    """One layer's share of a block (after padding the state pages)."""
    layers_per_group: int
    attention_groups: int
    state_groups: int
    state_blocks: int
    """Blocks one request takes in each state group."""
    attention_bytes_per_token: int
    """All full-attention layers (the MTP layer's too), unpadded."""
    state_bytes_per_sequence: int
    """All linear-attention layers' conv + recurrent state, unpadded."""

    @property
    def bytes_per_block(self) -> int:
        return self.layers_per_group * self.page_bytes

    def blocks_per_request(self, max_model_len: int) -> int:
        attention = self.attention_groups * -(-max_model_len // self.block_size)
        return attention + self.state_groups * self.state_blocks

    def largest_context(self, num_blocks: int) -> int:
        """The longest request vLLM accepts: it must fit beside the null block."""
        spare = num_blocks - 1 - self.state_groups * self.state_blocks
        if spare < self.attention_groups:
            return 0
        return spare // self.attention_groups * self.block_size


def kv_layout(
    shape: ModelShape,
    *,
    kv_bytes: int,
    model_bytes: int,
    platform: Platform,
    draft_tokens: int = 0,
    mtp_layers: int = 0,
    prefix_caching: bool = True,
    tensor_parallel_size: int = 1,
    ssm_state_float32: bool = False,
) -> KvLayout:
    """The per-rank layout for `shape`; `mtp_layers` are drafter attention layers added."""
    tp = tensor_parallel_size
    per_token = 2 * max(1, shape.num_kv_heads // tp) * shape.head_dim * kv_bytes
    attention_layers = shape.full_attention_layers + mtp_layers
    block = _DEFAULT_BLOCK[platform]
    state_page = 0
    if shape.is_hybrid:
        conv_dim = (
            2 * shape.linear_key_head_dim * shape.linear_num_key_heads
            + shape.linear_value_head_dim * shape.linear_num_value_heads
        ) // tp
        conv = conv_dim * (shape.linear_conv_kernel_dim - 1 + draft_tokens) * model_bytes
        ssm_bytes = model_bytes
        if shape.mamba_ssm_dtype:
            ssm_bytes = _DTYPE_BYTES.get(shape.mamba_ssm_dtype, model_bytes)
        if ssm_state_float32 and shape.mamba_ssm_dtype in (None, "float32"):
            ssm_bytes = 4
        recurrent = (
            (shape.linear_num_value_heads // tp)
            * shape.linear_value_head_dim
            * shape.linear_key_head_dim
            * ssm_bytes
        )
        state_page = conv + recurrent
        # The smallest block (a multiple of the kernel block) whose page holds a state.
        align = max(_KERNEL_BLOCK[platform], block)
        needed = align * -(-state_page // (align * per_token))
        block = max(block, _KERNEL_BLOCK[platform] * -(-needed // _KERNEL_BLOCK[platform]))
    page = block * per_token
    if not shape.is_hybrid:
        return KvLayout(block, page, attention_layers, 1, 0, 0, per_token * attention_layers, 0)
    counts = (attention_layers, shape.linear_attention_layers)
    size = min(counts) if max(counts) >= 1.5 * min(counts) else max(counts)
    return KvLayout(
        block_size=block,
        page_bytes=page,
        layers_per_group=size,
        attention_groups=-(-attention_layers // size),
        state_groups=-(-shape.linear_attention_layers // size),
        state_blocks=(2 if prefix_caching else 1) + draft_tokens,
        attention_bytes_per_token=per_token * attention_layers,
        state_bytes_per_sequence=state_page * shape.linear_attention_layers,
    )


# -- the prediction ---------------------------------------------------------
@dataclass
class DtypeFit:
    """The figures for one KV dtype (several names when they share a size)."""

    kv_cache_dtype: str
    names: list[str]
    bytes_per_element: int
    block_size: int
    attention_bytes_per_token: int
    state_bytes_per_sequence: int
    num_blocks: int | None = None
    kv_tokens: int | None = None
    """What vLLM logs as `KV cache size: N tokens`."""
    largest_context: int | None = None
    concurrency: float | None = None
    """Requests of max_model_len tokens that fit at once (vLLM's `Maximum concurrency`)."""
    starts: bool | None = None
    """vLLM accepts max_model_len (one full request fits)."""
    fits_all_seqs: bool | None = None
    """max_num_seqs full-length requests fit at once (None when max_num_seqs is unset)."""
    bytes_per_block: int = 0
    """One block across a group's layers: the budget is cut into these."""
    blocks_per_request: int = 0
    """Blocks one request of max_model_len tokens takes."""

    def tokens_for(self, budget_bytes: int, max_model_len: int) -> int:
        """What vLLM logs as `KV cache size` for a budget of `budget_bytes`."""
        if not self.bytes_per_block or not self.blocks_per_request:
            return 0
        num_blocks = max(budget_bytes, 0) // self.bytes_per_block
        return int(num_blocks / self.blocks_per_request * max_model_len)


Verdict = Literal["fits", "tight", "does not fit", "unknown"]


@dataclass
class FitReport:
    model: str
    platform: Platform
    model_dtype_bytes: int
    tensor_parallel_size: int
    weights_loaded_bytes: int
    """Per rank: language model, plus the MTP head when MTP is on, plus vision unless
    language_model_only."""
    weights: dict[str, int]
    max_model_len: int
    max_position_embeddings: int | None
    max_num_seqs: int | None
    full_attention_layers: int
    linear_attention_layers: int
    mtp_attention_layers: int
    budget_bytes: int | None
    """KV-cache bytes per rank; None when nothing says how much there is."""
    budget_source: str
    margin_bytes: int
    """Held back for activations, non-torch memory and CUDA graphs (GPU budgets only)."""
    gpu_total_bytes: int | None
    gpu_free_bytes: int | None
    gpu_memory_utilization: float | None
    chosen: DtypeFit
    others: list[DtypeFit] = field(default_factory=list)
    verdict: Verdict = "unknown"
    reason: str = ""
    fixes: list[str] = field(default_factory=list)
    certain: bool = False
    """The refusal holds even with no margin at all (the launch gate acts only then)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _evaluate(
    fit: DtypeFit,
    layout: KvLayout,
    budget: int | None,
    max_len: int,
    seqs: int | None,
    cap: int | None,
) -> DtypeFit:
    if budget is None:
        return fit
    num_blocks = max(budget, 0) // layout.bytes_per_block
    per_request = layout.blocks_per_request(max_len)
    concurrency = num_blocks / per_request
    return replace(
        fit,
        num_blocks=num_blocks,
        kv_tokens=int(concurrency * max_len),
        # vLLM refuses a max_model_len past the model's own limit, whatever the memory.
        largest_context=min(layout.largest_context(num_blocks), cap or 2**62),
        concurrency=concurrency,
        starts=num_blocks - 1 >= per_request,
        fits_all_seqs=None if seqs is None else concurrency >= seqs,
    )


def _largest_context_for(layout: KvLayout, num_blocks: int, seqs: int) -> int:
    """The longest max_model_len at which `seqs` requests of that length fit at once."""
    per_request = num_blocks // seqs - layout.state_groups * layout.state_blocks
    if per_request < layout.attention_groups:
        return 0
    return per_request // layout.attention_groups * layout.block_size


def predict_fit_from(
    shape: ModelShape,
    weights: WeightBytes,
    profile: ServeProfile,
    *,
    platform: Platform,
    kv_dtypes: tuple[str, ...] = EXACT_KV_DTYPES,
    gpu_total_bytes: int | None = None,
    gpu_free_bytes: int | None = None,
    ssm_state_float32: bool = False,
    margin_bytes: int | None = None,
    hybrid_prefix_caching_default: bool = True,
) -> FitReport:
    """The prediction from shapes and weight sizes (no files): what predict_fit computes.

    `hybrid_prefix_caching_default`: what the installed vLLM does for a hybrid model when
    the profile leaves prefix caching unset (EngineFacts says which).
    """
    p = profile
    prefix_caching = p.enable_prefix_caching
    if prefix_caching is None:
        prefix_caching = hybrid_prefix_caching_default or not shape.is_hybrid
    tp = p.tensor_parallel_size
    model_bytes = model_dtype_bytes(p.dtype, shape.config_dtype)
    mtp_on = p.speculative.method == "mtp"
    draft_tokens = p.speculative.num_speculative_tokens if p.speculative.enabled else 0
    mtp_layers = shape.mtp_layers if mtp_on else 0
    weights_loaded = -(-weights.loaded(mtp=mtp_on, language_model_only=p.language_model_only) // tp)
    requested_len = parse_max_model_len(p.max_model_len)
    max_len = requested_len or shape.max_position_embeddings or 0
    if max_len <= 0:
        raise FitError("max_model_len is unset and config.json has no max_position_embeddings")

    graphs = not p.enforce_eager and p.cudagraph_mode != "NONE"
    if margin_bytes is None:
        margin_bytes = GPU_MARGIN_BYTES + (CUDA_GRAPH_MARGIN_BYTES if graphs else 0)
    utilization = None
    if p.kv_cache_memory_bytes is not None:
        budget: int | None = p.kv_cache_memory_bytes
        source, margin_bytes = "kv_cache_memory_bytes", 0
    elif gpu_total_bytes is not None:
        utilization = p.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
        budget = int(gpu_total_bytes * utilization) - weights_loaded - margin_bytes
        source = f"GPU {gpu_total_bytes / GIB:.2f} GiB x {utilization:g} - weights - margin"
    else:
        budget, source, margin_bytes = None, "unknown (no GPU and no kv_cache_memory_bytes)", 0

    def figures(names: list[str]) -> tuple[DtypeFit, KvLayout] | None:
        size = kv_dtype_bytes(names[0], model_bytes)
        if size is None:
            return None
        layout = kv_layout(
            shape,
            kv_bytes=size,
            model_bytes=model_bytes,
            platform=platform,
            draft_tokens=draft_tokens,
            mtp_layers=mtp_layers,
            prefix_caching=prefix_caching,
            tensor_parallel_size=tp,
            ssm_state_float32=ssm_state_float32 and platform == "cpu",
        )
        fit = DtypeFit(
            kv_cache_dtype=names[0],
            names=names,
            bytes_per_element=size,
            block_size=layout.block_size,
            attention_bytes_per_token=layout.attention_bytes_per_token,
            state_bytes_per_sequence=layout.state_bytes_per_sequence,
            bytes_per_block=layout.bytes_per_block,
            blocks_per_request=layout.blocks_per_request(max_len),
        )
        cap = shape.max_position_embeddings
        return _evaluate(fit, layout, budget, max_len, p.max_num_seqs, cap), layout

    chosen_pair = figures([p.kv_cache_dtype])
    if chosen_pair is None:
        raise FitError(
            f"kv_cache_dtype {p.kv_cache_dtype!r} packs scales qtui cannot size; "
            f"fit predicts {', '.join(EXACT_KV_DTYPES)}"
        )
    chosen, layout = chosen_pair
    # The other accepted dtypes, one row per distinct element size.
    by_size: dict[int, list[str]] = {}
    for name in kv_dtypes:
        size = kv_dtype_bytes(name, model_bytes)
        if size is not None and name != p.kv_cache_dtype and size != chosen.bytes_per_element:
            by_size.setdefault(size, []).append(name)
    others = [pair[0] for names in by_size.values() if (pair := figures(names))]

    report = FitReport(
        model=p.model,
        platform=platform,
        model_dtype_bytes=model_bytes,
        tensor_parallel_size=tp,
        weights_loaded_bytes=weights_loaded,
        weights=asdict(weights),
        max_model_len=max_len,
        max_position_embeddings=shape.max_position_embeddings,
        max_num_seqs=p.max_num_seqs,
        full_attention_layers=shape.full_attention_layers,
        linear_attention_layers=shape.linear_attention_layers,
        mtp_attention_layers=mtp_layers,
        budget_bytes=budget,
        budget_source=source,
        margin_bytes=margin_bytes,
        gpu_total_bytes=gpu_total_bytes,
        gpu_free_bytes=gpu_free_bytes,
        gpu_memory_utilization=utilization,
        chosen=chosen,
        others=others,
    )
    _judge(report, layout, weights_loaded)
    return report


def _judge(report: FitReport, layout: KvLayout, weights_loaded: int) -> None:
    chosen, max_len, seqs = report.chosen, report.max_model_len, report.max_num_seqs
    if report.budget_bytes is None:
        report.verdict = "unknown"
        report.reason = (
            "no KV budget to check against: set kv_cache_memory_bytes, or run on the GPU box"
        )
        return
    assert chosen.num_blocks is not None and chosen.concurrency is not None
    fixes: list[str] = []
    gpu = report.gpu_total_bytes
    needed = layout.bytes_per_block * (layout.blocks_per_request(max_len) + 1)
    if report.budget_source == "kv_cache_memory_bytes":
        fixes_budget = f"kv_cache_memory_bytes {needed} ({human_bytes(needed)})"
    elif gpu:
        util = (needed + weights_loaded + report.margin_bytes) / gpu
        fixes_budget = (
            f"gpu_memory_utilization {math.ceil(util * 100) / 100:.2f}" if util <= 1 else ""
        )
    else:
        fixes_budget = ""
    if not chosen.starts:
        report.verdict = "does not fit"
        if report.budget_bytes <= 0:
            report.reason = (
                f"the weights ({human_bytes(weights_loaded)}) and margin "
                f"({human_bytes(report.margin_bytes)}) leave no memory for the KV cache"
            )
        else:
            report.reason = (
                f"max_model_len {max_len} needs {human_bytes(needed)} of KV cache; "
                f"{human_bytes(report.budget_bytes)} holds at most {chosen.largest_context} tokens"
            )
        if chosen.largest_context:
            fixes.append(f"max_model_len {chosen.largest_context}")
        longest = _largest_context_for(layout, chosen.num_blocks, seqs) if seqs else 0
        if seqs and seqs > 1 and longest:
            fixes.append(f"max_model_len {longest} (for {seqs} full-length requests at once)")
        fixes += [
            f"kv_cache_dtype {other.kv_cache_dtype} (largest context {other.largest_context})"
            for other in report.others
            if other.starts
        ]
        if fixes_budget:
            fixes.append(fixes_budget)
        optimistic = (report.budget_bytes + report.margin_bytes) // layout.bytes_per_block
        report.certain = optimistic - 1 < layout.blocks_per_request(max_len)
    elif seqs is not None and not chosen.fits_all_seqs:
        report.verdict = "tight"
        report.reason = (
            f"{chosen.concurrency:.2f} requests of {max_len} tokens fit at once, "
            f"max_num_seqs is {seqs}: long requests will wait or be preempted"
        )
        longest = _largest_context_for(layout, chosen.num_blocks, seqs)
        if longest:
            fixes.append(f"max_model_len {longest} (for {seqs} full-length requests at once)")
        fixes += [
            f"kv_cache_dtype {other.kv_cache_dtype} ({other.concurrency:.2f} requests)"
            for other in report.others
            if other.fits_all_seqs
        ]
        if int(chosen.concurrency) >= 1:
            fixes.append(f"max_num_seqs {int(chosen.concurrency)}")
    else:
        report.verdict = "fits"
        report.reason = (
            f"{chosen.kv_tokens} KV tokens: {chosen.concurrency:.2f} requests of {max_len} tokens"
        )
    cap = report.max_position_embeddings
    if cap and max_len > cap:
        report.reason += f"; note max_model_len {max_len} exceeds the model's {cap}"
    report.fixes = fixes


def read_config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except OSError as error:
        raise FitError(f"{model_dir}: cannot read config.json ({error.strerror})") from None
    except ValueError:
        raise FitError(f"{model_dir}/config.json is not valid JSON") from None
    if not isinstance(config, dict):
        raise FitError(f"{model_dir}/config.json is not an object")
    return config


_Signature = tuple[tuple[str, int, int], ...]
_CHECKPOINTS: dict[tuple[str, str], tuple[_Signature, ModelShape, WeightBytes]] = {}
_CHECKPOINTS_KEPT = 16


def _checkpoint_files(model_dir: Path) -> _Signature:
    """(name, size, mtime) of config.json and the shards: a rewritten checkpoint reads anew."""
    files = [model_dir / "config.json", *sorted(model_dir.glob("*.safetensors"))]
    signature = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue
        signature.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


def read_checkpoint(model_dir: Path, profile_dtype: str = "auto") -> tuple[ModelShape, WeightBytes]:
    """The shape from config.json and the weight sizes from the safetensors headers.

    Kept per directory and --dtype until a file changes, so a form that re-predicts on
    every edit pays only for the arithmetic (and a stat of each file).
    """
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise FitError(f"{model_dir}: fit needs a local checkpoint directory")
    key = (str(model_dir.resolve()), profile_dtype)
    signature = _checkpoint_files(model_dir)
    kept = _CHECKPOINTS.get(key)
    if kept is not None and kept[0] == signature:
        return kept[1], kept[2]
    try:
        shape = ModelShape.from_config(read_config(model_dir))
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, FitError):
            raise
        raise FitError(f"{model_dir}/config.json: missing or odd {error}") from None
    weights = checkpoint_weights(model_dir, model_dtype_bytes(profile_dtype, shape.config_dtype))
    if len(_CHECKPOINTS) >= _CHECKPOINTS_KEPT:
        _CHECKPOINTS.pop(next(iter(_CHECKPOINTS)), None)
    _CHECKPOINTS[key] = (signature, shape, weights)
    return shape, weights


def predict_fit(
    profile: ServeProfile,
    *,
    platform: Platform,
    kv_dtypes: tuple[str, ...] = EXACT_KV_DTYPES,
    gpu_total_bytes: int | None = None,
    gpu_free_bytes: int | None = None,
    margin_bytes: int | None = None,
    ssm_state_float32: bool | None = None,
    hybrid_prefix_caching_default: bool = True,
) -> FitReport:
    """Read the local checkpoint's config.json and safetensors headers, and predict.

    `kv_dtypes` are the dtypes the installed vLLM accepts (the other rows).
    `ssm_state_float32` defaults to what this machine's CPU makes vLLM-CPU do.
    """
    model_dir = Path(profile.model).expanduser()
    if not model_dir.is_dir():
        raise FitError(f"{profile.model}: fit needs a local checkpoint directory")
    shape, weights = read_checkpoint(model_dir, profile.dtype)
    if ssm_state_float32 is None:
        ssm_state_float32 = platform == "cpu" and cpu_has_avx512_bf16()
    return predict_fit_from(
        shape,
        weights,
        profile,
        platform=platform,
        kv_dtypes=kv_dtypes,
        gpu_total_bytes=gpu_total_bytes,
        gpu_free_bytes=gpu_free_bytes,
        ssm_state_float32=ssm_state_float32,
        margin_bytes=margin_bytes,
        hybrid_prefix_caching_default=hybrid_prefix_caching_default,
    )


@dataclass(frozen=True)
class FitTarget:
    """Where a profile would run: what its figures depend on besides the profile."""

    platform: Platform
    kv_dtypes: tuple[str, ...] = EXACT_KV_DTYPES
    """What the installed vLLM accepts (the report's other rows)."""
    gpu_total_bytes: int | None = None
    gpu_free_bytes: int | None = None
    hybrid_prefix_caching_default: bool = True
    """The installed vLLM's default for hybrid models (EngineFacts)."""

    def predict(self, profile: ServeProfile) -> FitReport:
        return predict_fit(
            profile,
            platform=self.platform,
            kv_dtypes=self.kv_dtypes,
            gpu_total_bytes=self.gpu_total_bytes,
            gpu_free_bytes=self.gpu_free_bytes,
            hybrid_prefix_caching_default=self.hybrid_prefix_caching_default,
        )


def local_target(
    engine: Engine | None, gpus: list[int] | None = None, *, sample_gpus: bool = True
) -> FitTarget:
    """This machine with `engine`: a CPU build plans for CPU, else the GPUs NVML sees
    (`gpus`: those chosen, else all; `sample_gpus=False` when the budget is known without).

    Runs a subprocess the first time an engine is asked about, and NVML: call it from
    a worker."""
    facts = engine_facts(engine) if engine is not None else None
    dtypes = facts.kv_cache_dtypes if facts is not None else EXACT_KV_DTYPES
    hybrid_caching = facts.hybrid_prefix_caching_default if facts is not None else True
    if engine is not None and engine_platform(engine) == "cpu":
        return FitTarget("cpu", dtypes, hybrid_prefix_caching_default=hybrid_caching)
    memory = gpu_memory(gpus) if sample_gpus else None
    platform: Platform = "cuda" if engine is not None or memory is not None else "cpu"
    total, free = (memory[1], memory[0]) if memory is not None else (None, None)
    return FitTarget(platform, dtypes, total, free, hybrid_caching)


# -- the check against what vLLM allocated -------------------------------------
_RECORD_PREDICTIONS: dict[tuple[int, float], FitReport | None] = {}


def prediction_for_record(record: ServerRecord) -> FitReport | None:
    """The prediction for the profile a server was launched with, on this machine.

    None when it cannot be made (the checkpoint is not local, the vLLM in the record's
    command is gone, a KV dtype qtui cannot size). Kept per launched server (pid and
    start time); the first call reads files and may run NVML: call it from a worker.
    """
    key = (record.pid, record.create_time)
    if key in _RECORD_PREDICTIONS:
        return _RECORD_PREDICTIONS[key]
    report: FitReport | None = None
    try:
        engine = resolve_engine(shlex.split(record.command)[0])
        report = local_target(engine).predict(record.serve_profile)
    except (EngineError, FitError, IndexError, ValueError):
        report = None
    if len(_RECORD_PREDICTIONS) >= _CHECKPOINTS_KEPT:
        _RECORD_PREDICTIONS.pop(next(iter(_RECORD_PREDICTIONS)), None)
    _RECORD_PREDICTIONS[key] = report
    return report


def check_record_fit(record: ServerRecord, readout: StartupReadout) -> str | None:
    """The KV cache a launched server's vLLM allocated against qtui's arithmetic for its
    profile (compare_with_readout); None when there is nothing to compare."""
    prediction = prediction_for_record(record)
    return compare_with_readout(prediction, readout) if prediction is not None else None


READOUT_GIB_STEP = 0.005
"""vLLM logs its KV budget in GiB with two decimals: the true figure is within this."""


def _delta(predicted: int, allocated: int) -> str:
    change = allocated - predicted
    share = f", {change / predicted:+.1%}" if predicted else ""
    return f"Δ {change:+,}{share}"


def compare_with_readout(prediction: FitReport, readout: StartupReadout) -> str | None:
    """One line: does the KV cache vLLM allocated match the prediction? None: nothing to compare.

    With an exact budget (kv_cache_memory_bytes) the predicted token count must equal
    vLLM's. With a GPU budget the prediction guessed a margin, so the check is the
    arithmetic itself: the tokens that vLLM's own logged budget makes, by qtui's layout.
    """
    allocated = readout.kv_cache_tokens
    chosen = prediction.chosen
    if allocated is None:
        return None
    max_len = prediction.max_model_len
    sized = readout.tokens_per_request
    other_len = (
        f" (vLLM sized for {sized:,}-token requests, the profile {max_len:,})"
        if sized is not None and sized != max_len
        else ""
    )
    predicted = chosen.kv_tokens
    if prediction.budget_source == "kv_cache_memory_bytes" and predicted is not None:
        if predicted == allocated and not other_len:
            return f"predicted {predicted:,} KV tokens, vLLM allocated {allocated:,} ✓"
        return (
            f"⚠ predicted {predicted:,} KV tokens, vLLM allocated {allocated:,} "
            f"({_delta(predicted, allocated)}){other_len}"
        )
    gib = readout.kv_cache_gib
    if gib is None or not chosen.bytes_per_block:
        if predicted is None:
            return None
        return (
            f"predicted {predicted:,} KV tokens (budget guessed), vLLM allocated "
            f"{allocated:,} ({_delta(predicted, allocated)}){other_len}"
        )
    low = chosen.tokens_for(int((gib - READOUT_GIB_STEP) * GIB), max_len)
    high = chosen.tokens_for(int((gib + READOUT_GIB_STEP) * GIB), max_len)
    before = "" if predicted is None else f"; predicted {predicted:,} before launch"
    if low <= allocated <= high and not other_len:
        return (
            f"vLLM allocated {allocated:,} KV tokens in {gib:.2f} GiB, as qtui's arithmetic "
            f"gives ✓{before}"
        )
    expected = chosen.tokens_for(int(gib * GIB), max_len)
    return (
        f"⚠ vLLM allocated {allocated:,} KV tokens in {gib:.2f} GiB, qtui's arithmetic gives "
        f"{expected:,} ({_delta(expected, allocated)}){other_len}"
    )


def refusal(report: FitReport) -> str | None:
    """The launch gate's message when vLLM certainly would not start, else None."""
    if report.verdict != "does not fit" or not report.certain:
        return None
    fixes = "; or ".join(report.fixes) if report.fixes else "a smaller model"
    return (
        f"this profile cannot fit: {report.reason}; set {fixes} "
        "(`qtui fit` shows the figures; --skip-fit-check starts anyway)"
    )


def gpu_memory(indices: list[int] | None = None) -> tuple[int, int] | None:
    """(free, total) bytes of the GPU with the least free memory, from NVML; None without one.

    `indices`: only those GPUs (a profile's `gpus`); None: every GPU NVML sees.
    """
    from backend.gpu import Nvml, NvmlCallError, NvmlUnavailable

    nvml = Nvml()
    try:
        nvml.init()
    except NvmlUnavailable:
        return None
    try:
        readings = []
        for index in range(nvml.device_count()):
            if indices is not None and index not in indices:
                continue
            used, total = nvml.memory(nvml.handle(index))
            readings.append((total - used, total))
    except NvmlCallError:
        return None
    finally:
        nvml.shutdown()
    return min(readings) if readings else None


def engine_platform(engine: Engine) -> Platform:
    """CPU when the installed vLLM is a CPU build (its version alone may not say so)."""
    facts = engine_facts(engine)
    if facts.is_cpu_build:
        return "cpu"
    package = vllm_package_dir(engine.python) if engine.python else None
    if package is not None:
        site = package.parent
        if any(site.glob("vllm_cpu-*.dist-info")) or any(site.glob("vllm-*+cpu*.dist-info")):
            return "cpu"
    return "cuda"
