"""Spec on vs off from the user's own replies: the ledger, its maths, and real replies."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from backend.speed_ledger import (
    KEPT_PER_SETTING,
    MIN_COMPLETION_TOKENS,
    SpeedLedger,
    record_reply,
    spec_label,
)
from tests.conftest import RunningServer
from tui.cli import main
from tui.widgets.telemetry import speed_lines


def served(spec: str = "off", tokens: int | None = None, profile: str = "card") -> SimpleNamespace:
    """What the ledger reads of a ServerRecord."""
    speculative = {"method": spec, "num_speculative_tokens": tokens} if tokens else {}
    return SimpleNamespace(
        profile_name=profile,
        spec=spec,
        url="http://127.0.0.1:8000",
        profile={"model": "/models/q", "speculative": speculative},
    )


def test_speedup_is_the_median_on_over_the_median_off(tmp_path: Path) -> None:
    ledger = SpeedLedger(tmp_path)
    for tps in (30.0, 32.0, 31.0, 90.0):  # one outlier: medians ignore it
        assert ledger.record(served("off"), tps, 200)
    for tps in (58.0, 61.0, 60.0):
        assert ledger.record(served("mtp", 1), tps, 200)
    on = ledger.comparison(served("mtp", 1))
    assert on.running == "mtp:1"
    assert on.speedup == pytest.approx(60.0 / 31.5)
    assert on.describe() == ("mtp:1 1.90x vs off: 60.0 vs 31.5 tok/s (median of 3 and 4 replies)")
    off = ledger.comparison(served("off"))
    assert off.speedup is None
    assert off.describe() == "spec off: 31.5 tok/s; mtp:1 ran 1.90x (60.0 tok/s)"
    assert "gain [b]1.90x[/] mtp:1 vs off" in speed_lines(on)
    other_profile = ledger.comparison(served("mtp", 1, profile="other"))
    assert other_profile.settings == {} and "chat with spec off" in other_profile.describe()


def test_short_or_untimed_replies_do_not_count_and_old_ones_age_out(tmp_path: Path) -> None:
    ledger = SpeedLedger(tmp_path)
    assert not ledger.record(served(), 50.0, MIN_COMPLETION_TOKENS - 1)
    assert not ledger.record(served(), None, 500)
    assert ledger.comparison(served()).settings == {}
    for tps in range(1, KEPT_PER_SETTING + 6):
        ledger.record(served(), float(tps), 100)
    kept = json.loads(ledger.path.read_text())["card|/models/q"]["off"]
    assert len(kept) == KEPT_PER_SETTING and kept[0]["tps"] == 6.0


def test_a_damaged_ledger_starts_over(tmp_path: Path) -> None:
    ledger = SpeedLedger(tmp_path)
    ledger.path.write_text("{not json")
    assert ledger.comparison(served()).settings == {}
    assert ledger.record(served(), 40.0, 100)
    assert ledger.comparison(served()).settings["off"].replies == 1


def test_spec_label_names_the_method_and_its_draft_tokens() -> None:
    assert spec_label(served("off")) == "off"
    assert spec_label(served("ngram", 2)) == "ngram:2"


def test_a_real_reply_is_timed_under_the_running_spec_setting(
    vllm_ngram_server: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("QTUI_STATE_DIR", str(vllm_ngram_server.state_dir))
    record = vllm_ngram_server.supervisor.load_record()
    assert record is not None
    before = SpeedLedger().comparison(record).settings.get("ngram:2")
    counted_before = before.replies if before else 0
    assert main(["chat", "one two one two", "--max-tokens", "48", "--ignore-eos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["speed"]["running"] == "ngram:2"
    assert out["speed"]["settings"]["ngram:2"]["replies"] == counted_before + 1
    newest = json.loads(SpeedLedger().path.read_text())[f"ngram|{record.profile['model']}"]
    assert newest["ngram:2"][-1]["tps"] == pytest.approx(out["stats"]["tokens_per_s"], abs=1e-3)
    assert main(["serve", "status"]) == 0
    assert "speed    speed-up: chat with spec off too (m) to compare" in capsys.readouterr().out
    # A reply from another server (any --url but the one qtui runs) is never counted.
    assert record_reply("http://127.0.0.1:9/v1", 50.0, 100) is None
    assert SpeedLedger().comparison(record).settings["ngram:2"].replies == counted_before + 1
