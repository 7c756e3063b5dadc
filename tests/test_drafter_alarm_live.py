"""The dead-drafter alarm against the REAL vLLM, for a draft model (MTP: test_mtp_live.py).

A tiny model with other random weights drafts for the tiny target and vLLM
accepts none of its tokens, as with a useless MTP head. The control drafts with
the target's own weights, which vLLM accepts (temperature 0). The alarm is read
where a user reads it: `qtui serve status --json`, after a fixed amount of
work, so a slow machine gives the same evidence as a fast one.
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
from tests.test_mtp_live import generate

pytestmark = pytest.mark.slow


def status_after_work(url: str) -> dict:
    """`qtui serve status --json` once the drafter has drafted for four fixed replies."""
    generate(url)
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
        telemetry = status_after_work(status.record.url)["telemetry"]
    finally:
        supervisor.stop()
    run = telemetry["spec_run"]
    assert telemetry["spec_decode"] and run["drafts"] >= 20, telemetry
    alarms = [w for w in telemetry["warnings"] if "accepts almost nothing" in w]
    if drafter == "mismatched":
        assert run["acceptance_rate"] < 0.02, telemetry
        assert len(alarms) == 1 and "draft model does not match the target" in alarms[0]
    else:
        assert run["acceptance_rate"] > 0.5, telemetry
        assert alarms == []
