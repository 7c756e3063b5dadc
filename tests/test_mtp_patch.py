"""MTP doctor and patch on real files: a tiny Qwen3.5 quantized by real AutoRound (CPU).

The 0.12.x-style checkpoints (packed mtp.fc, stored zero 7 or 8, block list
cut to ["mtp.layers"]) are made from AutoRound's own packed tensors: the tiny
model's mtp.layers.0.mlp.down_proj packs to exactly a packed mtp.fc's shapes.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open

from backend.checkpoint import JOURNAL_NAME
from backend.mtp_doctor import Verdict, diagnose_checkpoint
from backend.mtp_patch import patch_checkpoint, recover_interrupted_patch
from backend.safetensors_header import (
    SafetensorsError,
    TensorSpec,
    read_header,
    read_tensor,
    write_safetensors_atomic,
)
from backend.vllm_quant_rules import FC
from tui.cli import main as qtui

REPO = Path(__file__).resolve().parent.parent
DONOR = "mtp.layers.0.mlp.down_proj"
EXTRA = "model_extra_tensors.safetensors"


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def make_packed_fc(checkpoint: Path, stored_zero: int) -> None:
    """Turn a 0.16.1 output into the 0.12.x layout: packed mtp.fc, fc not in extra_config."""
    header = read_header(checkpoint / EXTRA)
    specs: dict[str, TensorSpec] = {}
    for name in header.tensors:
        if name == f"{FC}.weight":
            continue
        specs[name] = TensorSpec.from_file(header, name)
    qweight = read_tensor(checkpoint / EXTRA, f"{DONOR}.qweight", header)
    qzeros = read_tensor(checkpoint / EXTRA, f"{DONOR}.qzeros", header)
    assert set(np.unique(_nibbles(qzeros))) == {7}, "AutoRound stores symmetric zeros as 7"
    if stored_zero == 8:
        qzeros = (qzeros.view(np.uint32) + np.uint32(0x11111111)).view(np.int32)
    specs[f"{FC}.qweight"] = TensorSpec.from_array(qweight)
    specs[f"{FC}.qzeros"] = TensorSpec.from_array(qzeros)
    specs[f"{FC}.scales"] = TensorSpec.from_file(header, f"{DONOR}.scales")
    write_safetensors_atomic(checkpoint / EXTRA, specs, header.metadata)
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    del index["weight_map"][f"{FC}.weight"]
    for suffix in (".qweight", ".qzeros", ".scales"):
        index["weight_map"][f"{FC}{suffix}"] = EXTRA
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((checkpoint / "config.json").read_text())
    quant = config["quantization_config"]
    del quant["extra_config"][FC]
    quant["block_name_to_quantize"] = ["mtp.layers"]  # what 0.12.x wrote for text-only models
    (checkpoint / "config.json").write_text(json.dumps(config))
    (checkpoint / "quantization_config.json").write_text(json.dumps(quant))


def _nibbles(packed: np.ndarray) -> np.ndarray:
    words = packed.view(np.uint32)
    return np.stack([(words >> shift) & 0xF for shift in range(0, 32, 4)])


def reference_fc(checkpoint: Path) -> np.ndarray:
    """The formula written out independently: w[o,i] = (q[i,o] - 8) * s[i//128, o], bf16."""
    qweight = read_tensor(checkpoint / EXTRA, f"{DONOR}.qweight").view(np.uint32)
    scales = read_tensor(checkpoint / EXTRA, f"{DONOR}.scales").astype(np.float64)
    rows, out = qweight.shape[0] * 8, qweight.shape[1]
    weight = np.empty((rows, out), dtype=np.float64)
    for row in range(rows):
        q = (qweight[row // 8] >> np.uint32(4 * (row % 8))) & np.uint32(0xF)
        weight[row] = (q.astype(np.float64) - 8.0) * scales[row // 128]
    as_f32 = weight.T.astype(np.float32)
    bits = as_f32.view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _load_all(checkpoint: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Open every indexed tensor with the safetensors library: the checkpoint is loadable."""
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    seen = {}
    for shard in set(index["weight_map"].values()):
        with safe_open(str(checkpoint / shard), framework="numpy") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                info = read_header(checkpoint / shard).tensors[name]
                seen[name] = (info.dtype, info.shape)
    assert set(seen) == set(index["weight_map"])
    return seen


def test_fresh_tiny_model_is_ready(tiny_qwen35: Path) -> None:
    report = diagnose_checkpoint(tiny_qwen35)
    assert report.verdict is Verdict.READY, report.reason
    assert report.mtp_layers_declared == 1 and report.mtp_layers_present == [0]
    assert report.fc is not None and report.fc.kind == "dense" and report.fc.shape == [256, 512]


def test_autoround_output_is_ready_with_notes_that_patch_tidies(
    quantized: Path, tmp_path: Path
) -> None:
    checkpoint = _copy(quantized, tmp_path / "ckpt")
    report = diagnose_checkpoint(checkpoint)
    # 0.16.1 keeps mtp.fc BF16 (vLLM drafts with it: tests/test_mtp_live.py) but writes
    # total_size 0 and a stale quantization_config.json, which vLLM does not read.
    assert report.verdict is Verdict.READY, report.reason
    assert report.fc_built_quantized is False and report.problems == []
    assert any("total_size is 0" in note for note in report.notes)
    assert qtui(["mtp", "inspect", str(checkpoint)]) == 0
    assert qtui(["mtp", "patch", str(checkpoint), "--dry-run"]) == 0
    assert diagnose_checkpoint(checkpoint).notes == report.notes  # dry run changed nothing
    assert qtui(["mtp", "patch", str(checkpoint)]) == 0
    assert qtui(["mtp", "inspect", str(checkpoint)]) == 0
    assert diagnose_checkpoint(checkpoint).notes == []
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    shards = {shard for shard in index["weight_map"].values()}
    assert index["metadata"]["total_size"] == sum(
        read_header(checkpoint / shard).data_bytes for shard in shards
    )
    _load_all(checkpoint)


@pytest.mark.parametrize("stored_zero", [7, 8])
def test_patch_dequantizes_both_zero_conventions_bit_exact(
    quantized: Path, tmp_path: Path, stored_zero: int
) -> None:
    checkpoint = _copy(quantized, tmp_path / "ckpt")
    make_packed_fc(checkpoint, stored_zero)
    before = diagnose_checkpoint(checkpoint)
    assert before.verdict is Verdict.FIXABLE
    assert before.fc is not None and before.fc.kind == "packed"
    assert before.fc.stored_zero == stored_zero
    assert before.fc.zero_offset == (1 if stored_zero == 7 else 0)
    # ["mtp.layers"] leaves mtp.fc outside the blocks: built BF16, yet stored packed.
    assert before.fc_built_quantized is False
    assert any("packed INT4" in problem for problem in before.problems)
    assert before.uncovered_packed and before.uncovered_packed[0].startswith(
        "model.language_model.layers."
    )

    result = patch_checkpoint(checkpoint)
    assert result.changed and result.after is not None
    assert result.after.verdict is Verdict.READY, result.after.reason

    header = read_header(checkpoint / EXTRA)
    assert header.tensors[f"{FC}.weight"].dtype == "BF16"
    assert header.tensors[f"{FC}.weight"].shape == (256, 512)
    assert not any(name.startswith(f"{FC}.q") or name == f"{FC}.scales" for name in header.tensors)
    patched = read_tensor(checkpoint / EXTRA, f"{FC}.weight", header)
    expected = reference_fc(checkpoint)
    assert np.array_equal(patched, expected)
    config = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
    side = json.loads((checkpoint / "quantization_config.json").read_text())
    for quant in (config, side):
        assert quant["extra_config"][FC] == {"bits": 16, "data_type": "fp"}
        assert "model.language_model.layers" in quant["block_name_to_quantize"]
    assert (result.backup_dir / "config.json").is_file()  # type: ignore[operator]
    seen = _load_all(checkpoint)
    assert seen[f"{FC}.weight"] == ("BF16", (256, 512))

    # A second patch is a no-op: nothing rewritten.
    stamps = {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir() if p.is_file()}
    again = patch_checkpoint(checkpoint)
    assert not again.changed and again.actions == []
    assert stamps == {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir() if p.is_file()}


def test_wrong_offset_differs(quantized: Path, tmp_path: Path) -> None:
    """Guard for the bit-exact test: the card's (q - z) * s on stored-7 data is not the result."""
    checkpoint = _copy(quantized, tmp_path / "ckpt")
    make_packed_fc(checkpoint, 7)
    patch_checkpoint(checkpoint, backup=False)
    patched = read_tensor(checkpoint / EXTRA, f"{FC}.weight")
    from backend.mtp_patch import dequantize_int4

    qweight = read_tensor(checkpoint / EXTRA, f"{DONOR}.qweight")
    qzeros = read_tensor(checkpoint / EXTRA, f"{DONOR}.qzeros")
    scales = read_tensor(checkpoint / EXTRA, f"{DONOR}.scales")
    card = dequantize_int4(qweight, qzeros, scales, 128, offset=0)
    from backend.safetensors_header import float32_to_bf16_bits

    assert not np.array_equal(patched, float32_to_bf16_bits(card))


@pytest.mark.parametrize(
    "crash_at", ["temp:model_extra_tensors.safetensors", "backup", "commit", "rename:config.json"]
)
def test_injected_crash_leaves_original_or_patched(
    quantized: Path, tmp_path: Path, crash_at: str
) -> None:
    checkpoint = _copy(quantized, tmp_path / "ckpt")
    make_packed_fc(checkpoint, 7)
    original = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}

    def crash(step: str) -> None:
        if step == crash_at:
            raise RuntimeError(f"injected crash after {step}")

    with pytest.raises(RuntimeError, match="injected crash"):
        patch_checkpoint(checkpoint, on_step=crash)
    committed = (checkpoint / JOURNAL_NAME).exists()
    assert committed == crash_at.startswith(("commit", "rename"))
    if committed:
        assert diagnose_checkpoint(checkpoint).verdict is Verdict.FIXABLE  # journal pending
    recover_interrupted_patch(checkpoint)
    now = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}
    if committed:
        assert diagnose_checkpoint(checkpoint).verdict is Verdict.READY
    else:
        assert now == original
    _load_all(checkpoint)


def test_killed_patch_process_leaves_original_or_patched(quantized: Path, tmp_path: Path) -> None:
    """SIGKILL a real `qtui mtp patch` at random points; every outcome is whole."""
    outcomes = set()
    for delay in (0.05, 0.3, 0.6, 1.0):
        checkpoint = _copy(quantized, tmp_path / f"ckpt-{delay}")
        make_packed_fc(checkpoint, 8)
        original = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}
        process = subprocess.Popen(
            [sys.executable, "-m", "tui", "mtp", "patch", str(checkpoint)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        recover_interrupted_patch(checkpoint)
        verdict = diagnose_checkpoint(checkpoint).verdict
        if verdict is Verdict.READY:
            outcomes.add("patched")
        else:
            now = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}
            assert now == original
            outcomes.add("original")
        _load_all(checkpoint)
    assert outcomes  # each run was one of the two; which depends on timing
    # The same command, not killed, does patch: the kills above interrupted real work.
    checkpoint = _copy(quantized, tmp_path / "ckpt-whole")
    make_packed_fc(checkpoint, 8)
    finished = subprocess.run(
        [sys.executable, "-m", "tui", "mtp", "patch", str(checkpoint)], cwd=REPO, check=False
    )
    assert finished.returncode == 0
    assert diagnose_checkpoint(checkpoint).verdict is Verdict.READY


def test_missing_mtp_tensors_is_impossible(quantized: Path, tmp_path: Path) -> None:
    checkpoint = _copy(quantized, tmp_path / "ckpt")
    index_path = checkpoint / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith("mtp.")}
    index_path.write_text(json.dumps(index))
    (checkpoint / EXTRA).unlink()
    report = diagnose_checkpoint(checkpoint)
    assert report.verdict is Verdict.IMPOSSIBLE
    assert "no mtp.* tensors" in report.reason
    assert qtui(["mtp", "inspect", str(checkpoint)]) == 2
    assert qtui(["mtp", "patch", str(checkpoint)]) == 2


def test_truncated_and_foreign_files_give_clear_errors(quantized: Path, tmp_path: Path) -> None:
    checkpoint = _copy(quantized, tmp_path / "ckpt")
    shard = checkpoint / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(SafetensorsError, match="truncated"):
        read_header(shard)
    report = diagnose_checkpoint(checkpoint)
    assert report.verdict is Verdict.IMPOSSIBLE and "truncated" in report.reason

    shard.write_bytes(b"PK\x03\x04 this is a zip file, not safetensors" * 10)
    with pytest.raises(SafetensorsError, match="not a safetensors file"):
        read_header(shard)
    shard.write_bytes(b"abc")
    with pytest.raises(SafetensorsError, match="too short"):
        read_header(shard)
    assert qtui(["mtp", "inspect", str(checkpoint)]) == 2
    assert qtui(["mtp", "inspect", str(tmp_path)]) == 2  # no config.json: not a checkpoint


def _edit_quant_config(checkpoint: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply `edit` to config.json's quantization_config and quantization_config.json alike."""
    config = json.loads((checkpoint / "config.json").read_text())
    edit(config["quantization_config"])
    (checkpoint / "config.json").write_text(json.dumps(config))
    (checkpoint / "quantization_config.json").write_text(json.dumps(config["quantization_config"]))


def test_fused_siblings_configured_differently_are_repaired(
    quantized: Path, tmp_path: Path
) -> None:
    checkpoint = _copy(quantized, tmp_path / "ckpt")
    assert qtui(["mtp", "patch", str(checkpoint), "--no-backup"]) == 0  # start from ready
    k_proj, in_proj_a = (
        "mtp.layers.0.self_attn.k_proj",
        "model.language_model.layers.0.linear_attn.in_proj_a",
    )

    def break_siblings(quant: dict[str, Any]) -> None:
        quant["extra_config"][k_proj] = {"bits": 16, "data_type": "fp"}  # packed, marked 16-bit
        del quant["extra_config"][in_proj_a]  # dense, now built 4-bit beside a 16-bit in_proj_b

    _edit_quant_config(checkpoint, break_siblings)
    report = diagnose_checkpoint(checkpoint)
    assert report.verdict is Verdict.FIXABLE, report.reason
    assert report.fused_inconsistent == [
        "model.language_model.layers.0.linear_attn: in_proj_b dense 16-bit, in_proj_a dense 4-bit",
        "mtp.layers.0.self_attn: q_proj packed 4-bit, k_proj packed 16-bit, v_proj packed 4-bit",
    ]
    assert any("inconsistent quant config" in problem for problem in report.problems)
    assert qtui(["mtp", "patch", str(checkpoint), "--no-backup"]) == 0
    after = diagnose_checkpoint(checkpoint)
    assert after.verdict is Verdict.READY and after.fused_inconsistent == [], after.reason
    extra = json.loads((checkpoint / "config.json").read_text())["quantization_config"][
        "extra_config"
    ]
    assert k_proj not in extra and extra[in_proj_a] == {"bits": 16, "data_type": "fp"}


def test_fused_siblings_stored_differently_are_impossible(quantized: Path, tmp_path: Path) -> None:
    checkpoint = _copy(quantized, tmp_path / "ckpt")
    q_proj = "mtp.layers.0.self_attn.q_proj"
    index_path = checkpoint / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"][f"{q_proj}.qweight"]
    header = read_header(checkpoint / shard)
    rows, out = header.tensors[f"{q_proj}.qweight"].shape
    specs = {
        name: TensorSpec.from_file(header, name)
        for name in header.tensors
        if not name.startswith(f"{q_proj}.")
    }
    specs[f"{q_proj}.weight"] = TensorSpec.from_array(np.zeros((out, rows * 8), np.uint16), "BF16")
    write_safetensors_atomic(checkpoint / shard, specs, header.metadata)
    for suffix in (".qweight", ".qzeros", ".scales"):
        del index["weight_map"][f"{q_proj}{suffix}"]
    index["weight_map"][f"{q_proj}.weight"] = shard
    index_path.write_text(json.dumps(index))
    before = {path.name: path.read_bytes() for path in checkpoint.iterdir()}

    report = diagnose_checkpoint(checkpoint)
    assert report.verdict is Verdict.IMPOSSIBLE
    assert "stored differently" in report.reason and "mtp.layers.0.self_attn" in report.reason
    assert qtui(["mtp", "inspect", str(checkpoint)]) == 2
    assert qtui(["mtp", "patch", str(checkpoint)]) == 2
    assert {path.name: path.read_bytes() for path in checkpoint.iterdir()} == before


def test_an_mtp_shard_left_out_of_the_index_is_adopted(quantized: Path, tmp_path: Path) -> None:
    checkpoint = _copy(quantized, tmp_path / "ckpt")
    assert qtui(["mtp", "patch", str(checkpoint), "--no-backup"]) == 0
    index_path = checkpoint / "model.safetensors.index.json"
    ready_index = json.loads(index_path.read_text())
    index = copy.deepcopy(ready_index)
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != EXTRA}
    index_path.write_text(json.dumps(index))

    report = diagnose_checkpoint(checkpoint)
    assert report.verdict is Verdict.FIXABLE, report.reason
    assert report.adopted_files == [EXTRA] and report.mtp_tensors > 0
    assert report.reason.startswith(f"{EXTRA} holds mtp.* tensors the index does not list")
    assert qtui(["mtp", "patch", str(checkpoint), "--no-backup"]) == 0
    assert diagnose_checkpoint(checkpoint).verdict is Verdict.READY
    assert json.loads(index_path.read_text()) == ready_index
