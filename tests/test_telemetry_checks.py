"""Checks on telemetry: silent MTP failure, running vs requested config, startup readout."""

from __future__ import annotations

from pathlib import Path

from backend.metrics import MetricsScraper, TelemetrySnapshot
from backend.telemetry_checks import (
    Expected,
    StartupReadout,
    TelemetryChecks,
    config_mismatches,
    parse_startup,
    silent_drafter_failure,
    startup_readout,
)
from tests.test_metrics import page
from tui.screens.server import format_readout

PREFIX = "(EngineCore_DP0 pid=812) INFO 11-29 18:01:02 [gpu_worker.py:298] "
GPU_LOG = [
    PREFIX + "Model loading took 17.64 GiB memory and 41.3 seconds",
    PREFIX + "Available KV cache memory: 104.27 GiB",
    PREFIX + "GPU KV cache size: 1,366,720 tokens",
    PREFIX + "Maximum concurrency for 32,768 tokens per request: 41.71x",
]


def spec_snapshot(drafts: float, accepted: float, draft_tokens: float) -> TelemetrySnapshot:
    scraper = MetricsScraper("http://x", window_s=10)
    scraper.ingest(page(spec=(0, 0, 0)), at=0.0)
    return scraper.ingest(page(gen=drafts, spec=(drafts, draft_tokens, accepted)), at=10.0)


def test_silent_drafter_failure_fires_on_dead_acceptance_with_enough_drafts() -> None:
    dead = spec_snapshot(drafts=200, accepted=0, draft_tokens=400)
    warning = silent_drafter_failure(dead, "mtp")
    assert warning is not None
    assert "mtp.fc" in warning and "qtui mtp inspect" in warning
    assert "200 drafts since it started" in warning


def test_dead_drafter_alarm_counts_the_whole_run_and_outlives_an_idle_window() -> None:
    """The evidence is every draft since the server started: a first scrape can already
    carry it (however slow the machine was), and an idle window does not erase it."""
    scraper = MetricsScraper("http://x", window_s=10)
    first = scraper.ingest(page(gen=300, spec=(300, 300, 0)), at=0.0)
    assert first.drafts is None  # no window yet
    assert first.spec_run is not None and first.spec_run.drafts == 300
    assert silent_drafter_failure(first, "mtp") is not None
    idle = scraper.ingest(page(gen=300, spec=(300, 300, 0)), at=60.0)
    assert idle.drafts == 0 and idle.acceptance_rate is None
    assert idle.spec_run is not None and idle.spec_run.acceptance_rate == 0.0
    assert silent_drafter_failure(idle, "mtp") is not None
    healthy = MetricsScraper("http://x").ingest(page(gen=300, spec=(150, 150, 140)), at=0.0)
    assert healthy.spec_run is not None and healthy.spec_run.mean_acceptance_length == 1 + 140 / 150
    assert silent_drafter_failure(healthy, "mtp") is None


def test_silent_drafter_failure_stays_quiet_when_it_should() -> None:
    assert silent_drafter_failure(spec_snapshot(200, 150, 400), "mtp") is None  # healthy
    assert silent_drafter_failure(spec_snapshot(5, 0, 10), "mtp") is None  # too few drafts
    assert (
        silent_drafter_failure(spec_snapshot(200, 0, 400), "ngram") is None
    )  # ngram guesses: a low rate is no fault
    assert silent_drafter_failure(spec_snapshot(200, 3, 400), "mtp") is not None  # ~1.01 length


def test_config_mismatch_on_kv_dtype_and_spec_presence() -> None:
    scraper = MetricsScraper("http://x")
    snap = scraper.ingest(page(cache_dtype="fp8_e4m3", spec=(0, 0, 0)), at=0.0)
    assert config_mismatches(snap, Expected("mtp", "fp8")) == []  # same cache, two names
    assert config_mismatches(snap, Expected("mtp", "tq-k8v4"))[0].startswith(
        "the server runs KV-cache dtype 'fp8_e4m3'"
    )
    spec_off = config_mismatches(snap, Expected("off", "fp8"))
    assert len(spec_off) == 1 and "has it off" in spec_off[0]
    plain = MetricsScraper("http://x").ingest(page(), at=0.0)
    missing = config_mismatches(plain, Expected("mtp", "auto"))
    assert len(missing) == 1 and "no spec-decode counters" in missing[0]


def test_checks_run_inside_the_scraper() -> None:
    scraper = MetricsScraper("http://x", checks=TelemetryChecks(Expected("mtp", "auto")))
    scraper.ingest(page(spec=(0, 0, 0)), at=0.0)
    snap = scraper.ingest(page(gen=300, spec=(300, 600, 0)), at=10.0)
    assert len(snap.warnings) == 1 and "MTP is on but accepts almost nothing" in snap.warnings[0]


def test_startup_readout_from_gpu_lines() -> None:
    readout = parse_startup(GPU_LOG)
    assert readout.model_load_gib == 17.64 and readout.model_load_s == 41.3
    assert readout.kv_cache_gib == 104.27
    assert readout.kv_cache_tokens == 1_366_720
    assert readout.max_concurrency == 41.71 and readout.tokens_per_request == 32_768


def test_startup_readout_without_lines_is_empty(tmp_path: Path) -> None:
    assert startup_readout(tmp_path / "missing.log").empty
    assert parse_startup(["nothing here", "\x1b[32mINFO\x1b[0m still nothing\r"]).empty


def test_startup_readout_line_reads_well_for_tiny_and_large_models() -> None:
    tiny = StartupReadout(0.0, 0.01, 0.25, 524_288, 1024.0, 512)
    assert format_readout(tiny) == (
        "loaded: model <0.01 GiB in 0.01 s · KV 0.25 GiB · 524,288 tok · 1,024x @512"
    )
    card = StartupReadout(15.26, 12.3, 4.2, 68_848, 3.2, 262_144)
    assert format_readout(card) == (
        "loaded: model 15.26 GiB in 12.3 s · KV 4.20 GiB · 68,848 tok · 3.2x @262,144"
    )
    assert format_readout(StartupReadout()) == ""


def test_each_learned_drafter_names_its_own_cause() -> None:
    dead = spec_snapshot(drafts=200, accepted=0, draft_tokens=400)
    draft = silent_drafter_failure(dead, "draft_model")
    eagle = silent_drafter_failure(dead, "eagle3")
    assert draft is not None and draft.startswith("draft_model is on") and "mtp.fc" not in draft
    assert eagle is not None and "EAGLE-3 head" in eagle
    assert silent_drafter_failure(dead, "suffix") is None
