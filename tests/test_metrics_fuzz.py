"""Fuzzing: whatever text /metrics returns, the scraper never raises and never goes negative."""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from backend.metrics import MetricsScraper, TelemetrySnapshot
from tests.test_metrics import page

RATE_FIELDS = (
    "generation_tps",
    "prompt_tps",
    "prefix_cache_hit_rate",
    "ttft_mean_s",
    "itl_mean_s",
    "acceptance_rate",
    "mean_acceptance_length",
)

real_pages = st.builds(
    page,
    gen=st.floats(0, 1e12, allow_nan=False),
    prompt=st.floats(0, 1e12, allow_nan=False),
    spec=st.one_of(st.none(), st.tuples(*[st.floats(0, 1e9, allow_nan=False)] * 3)),
    per_pos=st.lists(st.floats(0, 1e9, allow_nan=False), max_size=4).map(tuple),
    start=st.floats(0, 2e9, allow_nan=False),
)

# Characters that matter to the Prometheus text format, plus anything at all.
format_chars = st.sampled_from([*'{}="\\#\n ,.eE+-_:0123456789', "NaN", "Inf", "-Inf"])


@st.composite
def mangled_pages(draw: st.DrawFn) -> str:
    """A real-looking page with a slice replaced, lines dropped or garbage spliced in."""
    text = draw(real_pages)
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "cut", "splice", "dup"]))
        line = lines[index]
        if action == "drop":
            lines.pop(index)
        elif action == "cut":
            lines[index] = line[: draw(st.integers(0, len(line)))]
        elif action == "splice":
            where = draw(st.integers(0, len(line)))
            junk = "".join(draw(st.lists(format_chars | st.text(max_size=3), max_size=6)))
            lines[index] = line[:where] + junk + line[where:]
        else:
            lines.insert(index, line)
    return "\n".join(lines)


any_text = st.one_of(st.text(max_size=400), mangled_pages(), real_pages)


def assert_sane(snap: TelemetrySnapshot) -> None:
    for name in RATE_FIELDS:
        value = getattr(snap, name)
        assert value is None or (math.isfinite(value) and value >= 0), (name, value)
    for value in [*snap.per_position_acceptance, *snap.generation_tps_history]:
        assert math.isfinite(value) and value >= 0
    snap.to_json()


@settings(max_examples=150, deadline=None)
@given(st.lists(any_text, min_size=1, max_size=6))
# Found by this test: 1 accepted of 2e-313 draft tokens overflowed to an infinite rate.
@example([page(), page(spec=(0.0, 2.2250738585e-313, 1.0))])
def test_any_sequence_of_pages_never_raises_nor_goes_negative(pages: list[str]) -> None:
    scraper = MetricsScraper("http://x", window_s=3)
    for second, text in enumerate(pages):
        assert_sane(scraper.ingest(text, at=float(second)))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_undecodable_bytes_never_raise(data: bytes) -> None:
    scraper = MetricsScraper("http://x")
    assert_sane(scraper.ingest(data.decode("latin-1"), at=1.0))
