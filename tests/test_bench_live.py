"""`qtui bench --ab` on the real vLLM serving the tiny Qwen3.5 with MTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from backend.bench import MODEL_CARD_PROMPTS, BenchPrompt
from backend.config import Settings, mtp_cpu_profile
from backend.engine import Engine
from backend.supervisor import ServerSupervisor
from tests.conftest import engine_spec, free_port
from tests.test_mtp_live import mtp_config, qtui, status_json
from tui.app import make_app
from tui.screens.bench import BenchScreen

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
    assert "gain" in result.stdout and "overall" in result.stdout
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


async def test_bench_screen_runs_ab_by_key_and_charts_it(
    engine: Engine, tiny_qwen35: Path, tmp_path: Path
) -> None:
    profile = mtp_cpu_profile(str(tiny_qwen35), port=free_port())
    supervisor = ServerSupervisor(engine)
    settings = Settings(
        vllm=engine_spec(), profiles={"tiny-mtp": profile}, default_profile="tiny-mtp"
    )
    short = tuple(BenchPrompt(p.name, p.prompt, 24) for p in MODEL_CARD_PROMPTS)
    await asyncio.to_thread(supervisor.start, "tiny-mtp", profile, timeout_s=300)
    app = make_app(settings=settings, supervisor=supervisor, poll_interval_s=0.5)
    try:
        async with app.run_test(size=(100, 40)) as pilot:
            screen = BenchScreen(supervisor, prompts=short, ready_timeout_s=300)
            app.push_screen(screen)
            await pilot.pause()
            await pilot.press("a")
            await pilot.pause()
            for worker in list(app.workers):
                if worker.group == "bench-run":
                    await worker.wait()
            await pilot.pause()
            assert screen.shown is not None, str(screen.query_one("#bench-progress").render())
            assert [half.spec for half in screen.shown.halves] == ["mtp:1", "off"]
            chart = str(screen.query_one("#bench-chart").render())
            assert chart.count("█") > 8 and "mtp:1" in chart and "off" in chart
            assert "x" in chart.split("mtp:1")[1].splitlines()[0]  # the gain on the MTP line
            assert "done: kept as" in str(screen.query_one("#bench-progress").render())
            assert supervisor.load_record().spec == "mtp"  # type: ignore[union-attr]
    finally:
        await asyncio.to_thread(supervisor.stop)
