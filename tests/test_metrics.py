"""MetricsScraper's parsing and window arithmetic on /metrics text shaped like vLLM 0.32's.

The live tests (test_metrics_live.py) hold the same code against the real server.
"""

from __future__ import annotations

import socket

import pytest

from backend.metrics import MetricsScraper, is_restart, parse_metrics
from tests.conftest import free_port


def page(
    *,
    gen: float = 0.0,
    prompt: float = 0.0,
    running: float = 0,
    waiting: float = 0,
    kv: float = 0.0,
    queries: float = 0.0,
    hits: float = 0.0,
    ttft: tuple[float, float] = (0.0, 0.0),
    itl: tuple[float, float] = (0.0, 0.0),
    spec: tuple[float, float, float] | None = None,
    per_pos: tuple[float, ...] = (),
    start: float = 1.7e9,
    cache_dtype: str = "auto",
    engines: int = 1,
) -> str:
    """A /metrics page in vLLM's layout (TYPE lines, `_total` + `_created`, buckets)."""
    lines = [
        "# HELP process_start_time_seconds Start time",
        "# TYPE process_start_time_seconds gauge",
    ]
    lines.append(f"process_start_time_seconds {start}")

    def family(name: str, kind: str, value: float, extra: str = "") -> None:
        lines.append(f"# HELP {name} help text")
        lines.append(f"# TYPE {name} {kind}")
        sample = f"{name}_total" if kind == "counter" else name
        for engine in range(engines):
            labels = f'engine="{engine}",model_name="tiny"{extra}'
            lines.append(f"{sample}{{{labels}}} {value / engines}")
        if kind == "counter":
            lines.append(f"# TYPE {name}_created gauge")
            lines.append(f'{name}_created{{engine="0",model_name="tiny"}} 1.7e9')

    def histogram(name: str, total: float, count: float) -> None:
        lines.append(f"# TYPE {name} histogram")
        for le in ("0.01", "0.1", "+Inf"):
            lines.append(f'{name}_bucket{{engine="0",le="{le}",model_name="tiny"}} {count}')
        lines.append(f'{name}_count{{engine="0",model_name="tiny"}} {count}')
        lines.append(f'{name}_sum{{engine="0",model_name="tiny"}} {total}')
        lines.append(f'{name}_created{{engine="0",model_name="tiny"}} 1.7e9')

    family("vllm:generation_tokens", "counter", gen)
    family("vllm:prompt_tokens", "counter", prompt)
    family("vllm:num_requests_running", "gauge", running)
    family("vllm:num_requests_waiting", "gauge", waiting)
    lines.append("# TYPE vllm:kv_cache_usage_perc gauge")
    for engine in range(engines):
        lines.append(f'vllm:kv_cache_usage_perc{{engine="{engine}",model_name="tiny"}} {kv}')
    family("vllm:prefix_cache_queries", "counter", queries)
    family("vllm:prefix_cache_hits", "counter", hits)
    histogram("vllm:time_to_first_token_seconds", *ttft)
    histogram("vllm:inter_token_latency_seconds", *itl)
    if spec is not None:
        drafts, draft_tokens, accepted = spec
        family("vllm:spec_decode_num_drafts", "counter", drafts)
        family("vllm:spec_decode_num_draft_tokens", "counter", draft_tokens)
        family("vllm:spec_decode_num_accepted_tokens", "counter", accepted)
        lines.append("# TYPE vllm:spec_decode_num_accepted_tokens_per_pos counter")
        for position, value in enumerate(per_pos):
            lines.append(
                "vllm:spec_decode_num_accepted_tokens_per_pos_total"
                f'{{engine="0",model_name="tiny",position="{position}"}} {value}'
            )
    lines.append("# TYPE vllm:cache_config_info gauge")
    lines.append(
        f'vllm:cache_config_info{{block_size="128",cache_dtype="{cache_dtype}",engine="0"}} 1.0'
    )
    return "\n".join(lines) + "\n"


def test_parse_sums_engines_and_skips_created_and_buckets() -> None:
    raw = parse_metrics(
        page(gen=100, running=4, kv=0.25, engines=2, per_pos=(5, 2), spec=(9, 18, 7))
    )
    assert raw.values["vllm:generation_tokens_total"] == 100
    assert raw.values["vllm:num_requests_running"] == 4
    assert raw.mean("vllm:kv_cache_usage_perc") == pytest.approx(0.25)
    assert not any(name.endswith(("_created", "_bucket")) for name in raw.values)
    assert raw.accepted_per_pos == {0: 5, 1: 2}
    assert raw.cache_config["cache_dtype"] == "auto"
    assert raw.start_time == 1.7e9
    assert raw.has_spec_decode


def test_window_rates_follow_the_formulas() -> None:
    scraper = MetricsScraper("http://127.0.0.1:9", window_s=10)
    first = scraper.ingest(
        page(
            gen=1000,
            prompt=50,
            queries=100,
            hits=10,
            ttft=(1.0, 10),
            itl=(2.0, 400),
            spec=(100, 200, 80),
            per_pos=(60, 20),
        ),
        at=100.0,
    )
    assert first.generation_tps is None and first.window_s is None
    snap = scraper.ingest(
        page(
            gen=1500,
            prompt=150,
            running=3,
            waiting=1,
            kv=0.5,
            queries=300,
            hits=110,
            ttft=(1.6, 13),
            itl=(3.0, 900),
            spec=(300, 600, 380),
            per_pos=(220, 160),
        ),
        at=110.0,
    )
    assert snap.window_s == pytest.approx(10.0)
    assert snap.generation_tps == pytest.approx(50.0)
    assert snap.prompt_tps == pytest.approx(10.0)
    assert (snap.running, snap.waiting, snap.kv_cache_usage) == (3, 1, 0.5)
    assert snap.prefix_cache_hit_rate == pytest.approx(100 / 200)
    assert snap.ttft_mean_s == pytest.approx(0.6 / 3)
    assert snap.itl_mean_s == pytest.approx(1.0 / 500)
    assert snap.acceptance_rate == pytest.approx(300 / 400)
    assert snap.mean_acceptance_length == pytest.approx(1 + 300 / 200)
    assert snap.per_position_acceptance == pytest.approx([160 / 200, 140 / 200])
    assert snap.spec_decode and snap.drafts == 200


def test_window_slides_and_keeps_one_baseline_at_its_start() -> None:
    scraper = MetricsScraper("http://x", window_s=10)
    for second in range(31):
        # 10 tok/s for the first 20 s, then 100 tok/s.
        tokens = 10 * min(second, 20) + 100 * max(0, second - 20)
        snap = scraper.ingest(page(gen=tokens), at=float(second))
    assert snap.window_s == pytest.approx(10.0)
    assert snap.generation_tps == pytest.approx(100.0)
    assert len(snap.generation_tps_history) == 30
    assert snap.generation_tps_history[0] == pytest.approx(10.0)


def test_counter_drop_restarts_the_window_without_negative_rates() -> None:
    scraper = MetricsScraper("http://x", window_s=10)
    scraper.ingest(page(gen=5000, spec=(50, 100, 40)), at=0.0)
    scraper.ingest(page(gen=6000, spec=(60, 120, 50)), at=1.0)
    after = scraper.ingest(page(gen=30, spec=(2, 4, 1), start=1.7e9), at=2.0)
    assert after.restarts_seen == 1
    assert after.generation_tps is None  # one scrape of the new server: no rate yet
    later = scraper.ingest(page(gen=130, spec=(4, 8, 3), start=1.7e9), at=3.0)
    assert later.generation_tps == pytest.approx(100.0)
    assert later.acceptance_rate == pytest.approx(2 / 4)
    assert all(v >= 0 for v in later.generation_tps_history)


def test_new_start_time_is_a_restart_even_when_counters_grew() -> None:
    before = parse_metrics(page(gen=10, start=1.7e9), at=0.0)
    after = parse_metrics(page(gen=5000, start=1.7e9 + 60), at=1.0)
    assert is_restart(before, after)
    scraper = MetricsScraper("http://x")
    scraper.ingest(page(gen=10, start=1.7e9), at=0.0)
    snap = scraper.ingest(page(gen=5000, start=1.7e9 + 60), at=1.0)
    assert snap.restarts_seen == 1 and snap.generation_tps is None


def test_spec_counters_vanishing_is_a_restart() -> None:
    before = parse_metrics(page(gen=10, spec=(1, 2, 1)), at=0.0)
    assert is_restart(before, parse_metrics(page(gen=20), at=1.0))
    assert not is_restart(before, parse_metrics(page(gen=20, spec=(1, 2, 1)), at=1.0))


def test_unreachable_server_is_stale_and_keeps_last_values() -> None:
    port = free_port()
    scraper = MetricsScraper(f"http://127.0.0.1:{port}", window_s=10)
    never = scraper.scrape()
    assert never.stale and "cannot reach" in (never.error or "")
    scraper.ingest(page(gen=0), at=0.0)
    good = scraper.ingest(page(gen=200), at=2.0)
    assert good.generation_tps == pytest.approx(100.0) and not good.stale
    stale = scraper.scrape()
    assert stale.stale
    assert stale.generation_tps == pytest.approx(100.0)


def test_non_metrics_answers_are_stale_not_errors() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        # A listener that never answers: the scrape times out, it does not hang.
        scraper = MetricsScraper(url, timeout_s=0.3)
        assert scraper.scrape().stale
    scraper = MetricsScraper("http://x")
    assert scraper.ingest("<html>not metrics</html>").stale
    assert scraper.ingest('vllm:generation_tokens_total{engine="0" 12\n').stale


def test_snapshot_json_is_plain() -> None:
    scraper = MetricsScraper("http://x")
    scraper.ingest(page(gen=0, spec=(0, 0, 0), per_pos=(0, 0)), at=0.0)
    snap = scraper.ingest(page(gen=10, spec=(4, 8, 2), per_pos=(2, 0)), at=1.0)
    data = snap.to_json()
    assert data["generation_tps"] == 10.0
    assert data["per_position_acceptance"] == [0.5, 0.0]
    assert "generation_tps_history" not in data
    assert "generation_tps_history" in snap.to_json(history=True)
