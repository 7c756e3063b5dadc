"""MetricsScraper against the real tiny vLLM: rates and acceptance match raw counter deltas.

The raw deltas come from this file's own reading of /metrics (a plain line scan,
not the scraper's parser), so a wrong formula or window cannot hide.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from backend.config import cpu_profile
from backend.engine import Engine
from backend.metrics import MetricsScraper, TelemetrySnapshot
from backend.supervisor import ServerSupervisor
from backend.telemetry_checks import Expected, TelemetryChecks, startup_readout
from tests.conftest import RunningServer, free_port

pytestmark = pytest.mark.vllm

GEN = "vllm:generation_tokens_total"
DRAFTS = "vllm:spec_decode_num_drafts_total"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
RUNNING = "vllm:num_requests_running"


def timed_raw_counters(url: str) -> tuple[float, dict[str, float]]:
    """(midpoint of the GET, every vllm: sample line summed by name, +position for per-pos)."""
    sent = time.monotonic()
    text = httpx.get(f"{url}/metrics", timeout=10).text
    at = (sent + time.monotonic()) / 2
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, _, value = line.rpartition(" ")
        key = name.split("{", 1)[0]
        if key == PER_POS:
            key += ":" + name.split('position="', 1)[1].split('"', 1)[0]
        found[key] = found.get(key, 0.0) + float(value)
    return at, found


def raw_counters(url: str) -> dict[str, float]:
    return timed_raw_counters(url)[1]


@contextmanager
def streaming_load(
    url: str,
    streams: int,
    *,
    max_tokens: int = 96,
    seconds: float = 60.0,
    requests: int = 1000,
    finish: bool = False,
) -> Iterator[threading.Event]:
    """`streams` threads each sending streamed completions back to back.

    Leaving the block stops them, or with `finish` waits until each has sent
    `requests`. Bounded both by time and by request count; only 127.0.0.1.
    """
    stop = threading.Event()
    deadline = time.monotonic() + seconds

    def worker(number: int) -> None:
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0)) as client:
            for sent in range(requests):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                body = {
                    "model": "tiny",
                    "prompt": f"{number} {sent} one two one two one two one two",
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                    "stream": True,
                }
                with client.stream("POST", f"{url}/v1/completions", json=body) as response:
                    response.raise_for_status()
                    for _ in response.iter_lines():
                        pass

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(streams)]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        if not finish:
            stop.set()
        for thread in threads:
            thread.join(timeout=120)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def settled_counters(url: str) -> dict[str, float]:
    """Counters once nothing runs and two reads agree (the engine publishes with a lag)."""
    wait_until(lambda: raw_counters(url).get(RUNNING, 0) == 0)
    previous = raw_counters(url)
    while True:
        time.sleep(0.5)
        current = raw_counters(url)
        if current == previous:
            return current
        previous = current


def test_generation_rate_matches_raw_counters_under_load(vllm_server: RunningServer) -> None:
    url = vllm_server.url
    scraper = MetricsScraper(url, window_s=120.0)
    # The window opens and closes on a quiet server, so the scraper's reads and the
    # test's raw reads see the same counters even when the machine is busy; only the
    # few milliseconds between them differ, against a window of ~15 s.
    settled_counters(url)
    scraper.scrape()
    started, before = timed_raw_counters(url)
    with streaming_load(url, streams=4):
        wait_until(lambda: raw_counters(url).get(RUNNING, 0) >= 2)
        running_seen = []
        for _ in range(10):
            time.sleep(1.0)
            running_seen.append(scraper.scrape().running or 0)
        # Any one scrape may fall between two requests of every stream (a CI run saw 0).
        assert max(running_seen) >= 1, running_seen
    settled_counters(url)
    snap = scraper.scrape()
    ended, after = timed_raw_counters(url)
    expected = (after[GEN] - before[GEN]) / (ended - started)
    assert expected > 10, "the load did not generate tokens"
    assert not snap.stale
    assert snap.window_s is not None and abs(snap.window_s - (ended - started)) < 0.5
    assert snap.generation_tps is not None
    assert abs(snap.generation_tps - expected) / expected < 0.03, (snap.generation_tps, expected)
    assert snap.itl_mean_s is not None and snap.itl_mean_s > 0
    assert len(snap.generation_tps_history) >= 11


def test_ngram_acceptance_matches_raw_counter_deltas(vllm_ngram_server: RunningServer) -> None:
    url = vllm_ngram_server.url
    scraper = MetricsScraper(url, window_s=600.0)
    before = settled_counters(url)
    first = scraper.scrape()
    assert first.spec_decode
    with streaming_load(url, streams=3, max_tokens=160, requests=3, finish=True):
        pass  # the context waits for every stream to finish
    after = settled_counters(url)
    snap = scraper.scrape()
    assert after == raw_counters(url), "counters moved during the check"

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    drafts, draft_tokens, accepted = delta(DRAFTS), delta(DRAFT_TOKENS), delta(ACCEPTED)
    assert drafts > 0 and draft_tokens > 0, "ngram made no drafts: the check would be empty"
    assert snap.drafts == drafts and snap.draft_tokens == draft_tokens
    assert snap.acceptance_rate == pytest.approx(accepted / draft_tokens)
    assert snap.mean_acceptance_length == pytest.approx(1 + accepted / drafts)
    positions = sorted(k for k in after if k.startswith(PER_POS + ":"))
    assert snap.per_position_acceptance == pytest.approx([delta(k) / drafts for k in positions])


def test_checks_agree_with_the_real_servers(
    vllm_server: RunningServer, vllm_ngram_server: RunningServer
) -> None:
    for server in (vllm_server, vllm_ngram_server):
        record = server.supervisor.load_record()
        assert record is not None
        checks = TelemetryChecks(Expected.from_record(record))
        snap = MetricsScraper(server.url, checks=checks).scrape()
        assert snap.cache_dtype == "auto"
        assert snap.warnings == [], (server.url, snap.warnings)
    wrong = MetricsScraper(vllm_server.url, checks=TelemetryChecks(Expected("mtp", "fp8")))
    warnings = wrong.scrape().warnings
    assert len(warnings) == 2
    assert "'auto'" in warnings[0] and "no spec-decode counters" in warnings[1]


def test_startup_readout_from_the_real_log(vllm_server: RunningServer) -> None:
    record = vllm_server.supervisor.load_record()
    assert record is not None
    readout = startup_readout(Path(record.log_path))
    # cpu_profile sets kv_cache_memory_bytes to 256 MiB and max_model_len to 512.
    assert readout.kv_cache_gib == pytest.approx(0.25)
    assert readout.kv_cache_tokens is not None and readout.kv_cache_tokens > 0
    assert readout.tokens_per_request == 512
    assert readout.max_concurrency == pytest.approx(readout.kv_cache_tokens / 512)
    assert readout.model_load_s is not None


def assert_no_negative(snap: TelemetrySnapshot) -> None:
    for value in (
        snap.generation_tps,
        snap.prompt_tps,
        snap.prefix_cache_hit_rate,
        snap.ttft_mean_s,
        snap.itl_mean_s,
        *snap.generation_tps_history,
    ):
        assert value is None or value >= 0, snap


@pytest.mark.slow
def test_restart_restarts_the_window_without_negative_rates(
    engine: Engine, tiny_model: Path, tmp_path: Path
) -> None:
    supervisor = ServerSupervisor(engine, state_dir=tmp_path / "own-state")
    profile = cpu_profile(str(tiny_model), port=free_port())
    status = supervisor.start("own", profile, timeout_s=300)
    assert status.record is not None
    url = status.record.url
    try:
        scraper = MetricsScraper(url, window_s=60.0)
        scraper.scrape()
        with streaming_load(url, streams=2, max_tokens=128, requests=2, finish=True):
            pass
        settled_counters(url)
        before_restart = scraper.scrape()
        assert before_restart.generation_tps is not None and before_restart.generation_tps > 0

        supervisor.stop()
        down = scraper.scrape()
        assert down.stale and down.generation_tps == before_restart.generation_tps

        supervisor.start("own", profile, timeout_s=300)
        restarted_at = time.monotonic()
        with streaming_load(url, streams=1, max_tokens=16, requests=1, finish=True):
            pass
        snaps = [scraper.scrape()]
        for _ in range(3):
            time.sleep(0.5)
            snaps.append(scraper.scrape())
    finally:
        supervisor.stop()
    assert snaps[0].restarts_seen == 1
    assert snaps[0].generation_tps is None  # one scrape of the new server: no rate, no spike
    for snap in snaps:
        assert not snap.stale
        assert_no_negative(snap)
        assert snap.window_s is None or snap.window_s <= time.monotonic() - restarted_at
    assert snaps[-1].generation_tps is not None
