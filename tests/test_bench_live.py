"""`qtui bench --ab` on the real vLLM serving the tiny Qwen3.5 with MTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_mtp_live import mtp_config, qtui, status_json

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
__all__ = ["mtp_config"]  # the fixture, shared with the live MTP tests


def test_ab_bench_runs_both_halves_and_leaves_the_server_as_it_was(
    mtp_config: int, tmp_path: Path
) -> None:
    assert qtui("serve", "start").returncode == 0
    before = status_json()
    out = tmp_path / "bench.json"
    result = qtui("bench", "--ab", "--max-tokens", "48", "--json", str(out), timeout=600)
    assert result.returncode == 0, result.stderr
    assert "restarting tiny-mtp with spec off" in result.stderr
    assert "speed-up" in result.stdout and "overall" in result.stdout
    data = json.loads(out.read_text())
    assert [half["spec"] for half in data["halves"]] == ["mtp:1", "off"]
    assert data["profile"]["speculative"]["method"] == "mtp" and data["device"]
    assert data["vllm_version"].startswith("0.32")
    for half in data["halves"]:
        assert [p["name"] for p in half["prompts"]] == [
            "haiku", "quantum", "deep-learning", "arithmetic",
        ]  # fmt: skip
        for prompt in half["prompts"]:
            assert prompt["median"]["tokens_per_s"] > 0
            assert prompt["median"]["tokens"] == 48  # ignore_eos: both halves decode alike
            for run in prompt["runs"]:
                # The engine counted the tokens usage reported, over its own decode time.
                engine_tokens = run["counter_tokens_per_s"] * run["engine_decode_s"]
                assert engine_tokens == pytest.approx(run["tokens"], rel=0.03)
            accept = prompt["median"]["acceptance_rate"]
            if half["spec"] == "off":
                assert accept is None
            else:
                assert accept >= 0.85, prompt
    assert set(data["speedup"]) == {"haiku", "quantum", "deep-learning", "arithmetic", "overall"}
    assert data["speedup"]["overall"] > 0
    after = status_json()
    assert after["spec"] == "mtp" and after["phase"] == "ready"  # restored
    assert after["pid"] != before["pid"]

    listed = qtui("bench", "--list")
    assert data["id"] in listed.stdout and "mtp:1" in listed.stdout
    compared = qtui("bench", "--compare", data["id"], str(out))
    assert compared.returncode == 0 and "speed-up" in compared.stdout


def test_ab_needs_a_server_qtui_runs(mtp_config: int) -> None:
    refused = qtui("bench", "--ab", "--url", "http://127.0.0.1:9")
    assert refused.returncode == 1 and "needs a server qtui runs" in refused.stderr
    nothing = qtui("bench")
    assert nothing.returncode == 1 and "qtui serve start" in nothing.stderr
