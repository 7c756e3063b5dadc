"""vLLM's /metrics, scraped and turned into windowed rates that tell the truth.

Lifetime counters say nothing about the last minute, so every figure here is a
delta between two scrapes over a window (default 10 s) kept in a ring buffer.
A server restart shows up as a counter going down or a new process start time:
the window then starts again instead of producing a negative or spiking rate.
The text is parsed by prometheus_client's parser; nothing here raises on a dead
server or on malformed text: the snapshot says `stale` and keeps the last values.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

GENERATION_TOKENS = "vllm:generation_tokens_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
SPEC_DRAFTS = "vllm:spec_decode_num_drafts_total"
SPEC_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
SPEC_ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
SPEC_ACCEPTED_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
CACHE_CONFIG = "vllm:cache_config_info"
START_TIME = "process_start_time_seconds"

# Sample-name endings of monotonic series: one going down means a new server.
MONOTONIC_SUFFIXES = ("_total", "_sum", "_count")
# Samples never used: skipping their lines before parsing keeps a 1 Hz scrape cheap.
SKIPPED_SUFFIXES = ("_bucket", "_created")
HISTORY_POINTS = 300
"""Sparkline points kept (one per scrape: five minutes at 1 Hz)."""


class MalformedMetrics(ValueError):
    """The /metrics text could not be read as Prometheus text."""


@dataclass(frozen=True)
class RawScrape:
    """One parsed /metrics page: every wanted sample summed over its labels."""

    at: float
    """time.monotonic() when the answer arrived."""
    values: dict[str, float]
    """Sample name -> sum over engines/labels (gauges and monotonic series)."""
    series_counts: dict[str, int]
    """Sample name -> how many labelled series were summed (for means of gauges)."""
    accepted_per_pos: dict[int, float]
    cache_config: dict[str, str]
    """Labels of vllm:cache_config_info (cache_dtype, block_size, ...)."""
    start_time: float | None
    """The API server's process start time: changes when the server restarts."""

    def mean(self, name: str) -> float | None:
        count = self.series_counts.get(name, 0)
        return self.values[name] / count if count else None

    @property
    def has_spec_decode(self) -> bool:
        return SPEC_DRAFTS in self.values


def _wanted_lines(text: str) -> Iterable[str]:
    """vLLM's lines minus buckets, `_created` and HELP: the parser's work drops ~6x."""
    for line in text.splitlines():
        if line.startswith("# HELP"):
            continue
        name = line[len("# TYPE ") :] if line.startswith("# TYPE ") else line
        if not name.startswith(("vllm:", START_TIME)):
            continue
        head = name.split("{", 1)[0].split(" ", 1)[0]
        if head.endswith(SKIPPED_SUFFIXES):
            continue
        yield line


def parse_metrics(text: str, at: float | None = None) -> RawScrape:
    """Parse /metrics text; raises MalformedMetrics (only) when it is not Prometheus text."""
    values: dict[str, float] = {}
    counts: dict[str, int] = {}
    per_pos: dict[int, float] = {}
    cache_config: dict[str, str] = {}
    start_time: float | None = None
    try:
        # Imported on the first scrape: the panel's first frame needs neither this
        # parser nor httpx, and together they cost a tenth of a second to import.
        from prometheus_client.parser import text_string_to_metric_families

        families = list(text_string_to_metric_families("\n".join(_wanted_lines(text)) + "\n"))
    except Exception as error:  # the parser raises several types on bad input
        raise MalformedMetrics(f"unreadable /metrics text: {error}") from None
    for family in families:
        for sample in family.samples:
            name, value = sample.name, float(sample.value)
            if name.endswith(SKIPPED_SUFFIXES) or not math.isfinite(value):
                continue
            if name == START_TIME:
                start_time = value
            elif name == CACHE_CONFIG:
                cache_config = dict(sample.labels)
            elif name == SPEC_ACCEPTED_PER_POS:
                try:
                    position = int(sample.labels.get("position", ""))
                except ValueError:
                    continue
                per_pos[position] = per_pos.get(position, 0.0) + value
            else:
                values[name] = values.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1
    if not values:
        raise MalformedMetrics("the answer holds no vllm: metrics (is this a vLLM server?)")
    return RawScrape(
        at=time.monotonic() if at is None else at,
        values=values,
        series_counts=counts,
        accepted_per_pos=dict(sorted(per_pos.items())),
        cache_config=cache_config,
        start_time=start_time,
    )


def is_restart(before: RawScrape, after: RawScrape) -> bool:
    """Did the server behind `after` start since `before` (counters reset)?"""
    if (
        before.start_time is not None
        and after.start_time is not None
        and abs(before.start_time - after.start_time) > 0.5
    ):
        return True
    for name, old in before.values.items():
        if name.endswith(MONOTONIC_SUFFIXES):
            new = after.values.get(name)
            if new is None or new < old:  # gone or lower: a new server's counters
                return True
    for position, old in before.accepted_per_pos.items():
        if after.accepted_per_pos.get(position, -1.0) < old:
            return True
    return False


@dataclass
class SpecTotals:
    """Speculative decoding since the server started: one server run has one spec setting,
    so these are the figures of that setting, however long ago the drafts were made."""

    drafts: float
    draft_tokens: float
    accepted_tokens: float
    acceptance_rate: float | None
    mean_acceptance_length: float | None
    per_position_acceptance: list[float]

    @classmethod
    def of(cls, scrape: RawScrape) -> SpecTotals | None:
        if not scrape.has_spec_decode:
            return None
        drafts = scrape.values.get(SPEC_DRAFTS, 0.0)
        draft_tokens = scrape.values.get(SPEC_DRAFT_TOKENS, 0.0)
        accepted = scrape.values.get(SPEC_ACCEPTED, 0.0)
        return cls(
            drafts=drafts,
            draft_tokens=draft_tokens,
            accepted_tokens=accepted,
            acceptance_rate=_ratio(accepted, draft_tokens),
            mean_acceptance_length=1.0 + accepted / drafts if drafts > 0 else None,
            per_position_acceptance=[
                count / drafts for count in scrape.accepted_per_pos.values() if drafts > 0
            ],
        )


@dataclass
class TelemetrySnapshot:
    """The windowed figures at one moment. None means "not known yet"."""

    url: str
    stale: bool = False
    """The last scrape failed; the figures are the last good ones."""
    error: str | None = None
    scraped_at: float | None = None
    """Wall-clock time of the last good scrape."""
    window_s: float | None = None
    """Seconds between the two scrapes the rates come from."""
    restarts_seen: int = 0
    generation_tps: float | None = None
    prompt_tps: float | None = None
    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None
    """0-1, mean over engines."""
    prefix_cache_hit_rate: float | None = None
    ttft_mean_s: float | None = None
    itl_mean_s: float | None = None
    spec_decode: bool = False
    """The server exports spec-decode counters (speculative decoding is on)."""
    drafts: float | None = None
    draft_tokens: float | None = None
    accepted_tokens: float | None = None
    acceptance_rate: float | None = None
    mean_acceptance_length: float | None = None
    per_position_acceptance: list[float] = field(default_factory=list)
    spec_run: SpecTotals | None = None
    """Since the server (and so its spec setting) started; stays when the window is idle."""
    cache_dtype: str | None = None
    warnings: list[str] = field(default_factory=list)
    generation_tps_history: list[float] = field(default_factory=list)
    acceptance_history: list[float] = field(default_factory=list)

    def to_json(self, history: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not history:
            data.pop("generation_tps_history")
            data.pop("acceptance_history")
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 6)
        data["per_position_acceptance"] = [round(v, 6) for v in self.per_position_acceptance]
        if self.spec_run is not None:
            data["spec_run"] = _rounded(asdict(self.spec_run))
        return data


def _rounded(data: dict[str, Any]) -> dict[str, Any]:
    rounded: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, float):
            value = round(value, 6)
        elif isinstance(value, list):
            value = [round(item, 6) for item in value]
        rounded[key] = value
    return rounded


def _ratio(numerator: float, denominator: float) -> float | None:
    if denominator <= 0:
        return None
    # A mangled page can hold a subnormal count: 1 / 2e-313 overflows to inf.
    ratio = numerator / denominator
    return ratio if math.isfinite(ratio) else None


def windowed(baseline: RawScrape, newest: RawScrape, url: str) -> TelemetrySnapshot:
    """The figures between two scrapes of one server run (rates need newest later)."""
    elapsed = newest.at - baseline.at

    def delta(name: str) -> float:
        return max(0.0, newest.values.get(name, 0.0) - baseline.values.get(name, 0.0))

    def rate(name: str) -> float | None:
        return delta(name) / elapsed if elapsed > 0 and name in newest.values else None

    snap = TelemetrySnapshot(url=url, window_s=elapsed if elapsed > 0 else None)
    snap.generation_tps = rate(GENERATION_TOKENS)
    snap.prompt_tps = rate(PROMPT_TOKENS)
    running, waiting = newest.values.get(RUNNING), newest.values.get(WAITING)
    snap.running = round(running) if running is not None else None
    snap.waiting = round(waiting) if waiting is not None else None
    snap.kv_cache_usage = newest.mean(KV_USAGE)
    if elapsed > 0:
        snap.prefix_cache_hit_rate = _ratio(delta(PREFIX_HITS), delta(PREFIX_QUERIES))
        snap.ttft_mean_s = _ratio(delta(f"{TTFT}_sum"), delta(f"{TTFT}_count"))
        snap.itl_mean_s = _ratio(delta(f"{ITL}_sum"), delta(f"{ITL}_count"))
    snap.cache_dtype = newest.cache_config.get("cache_dtype")
    snap.spec_decode = newest.has_spec_decode
    snap.spec_run = SpecTotals.of(newest)
    if snap.spec_decode and elapsed > 0:
        drafts, draft_tokens = delta(SPEC_DRAFTS), delta(SPEC_DRAFT_TOKENS)
        accepted = delta(SPEC_ACCEPTED)
        snap.drafts, snap.draft_tokens, snap.accepted_tokens = drafts, draft_tokens, accepted
        snap.acceptance_rate = _ratio(accepted, draft_tokens)
        snap.mean_acceptance_length = 1.0 + accepted / drafts if drafts > 0 else None
        if drafts > 0:
            snap.per_position_acceptance = [
                max(0.0, count - baseline.accepted_per_pos.get(position, 0.0)) / drafts
                for position, count in newest.accepted_per_pos.items()
            ]
    return snap


SnapshotCheck = Callable[[TelemetrySnapshot], list[str]]


class MetricsScraper:
    """Scrapes one server's /metrics and keeps the window's scrapes in a ring buffer.

    Call `scrape()` at the polling rate (1 Hz is plenty); it never raises.
    `checks` (see backend.telemetry_checks) turn a snapshot into warnings.
    """

    def __init__(
        self,
        url: str,
        *,
        window_s: float = 10.0,
        timeout_s: float = 2.0,
        checks: SnapshotCheck | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.window_s = window_s
        self.checks = checks
        import httpx

        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=1.0))
        self._owns_client = client is None
        self._scrapes: deque[RawScrape] = deque(maxlen=10_000)
        self._last: TelemetrySnapshot = TelemetrySnapshot(url=self.url)
        self._restarts = 0
        self._tps_history: deque[float] = deque(maxlen=HISTORY_POINTS)
        self._acceptance_history: deque[float] = deque(maxlen=HISTORY_POINTS)

    @property
    def last(self) -> TelemetrySnapshot:
        return self._last

    def scrape(self) -> TelemetrySnapshot:
        """GET /metrics and return the windowed figures (stale if the GET failed)."""
        import httpx

        try:
            sent = time.monotonic()
            response = self._client.get(f"{self.url}/metrics")
            received = time.monotonic()
            response.raise_for_status()
            text = response.text
        except httpx.HTTPError as error:
            return self._mark_stale(f"cannot reach {self.url}/metrics: {_short(error)}")
        except Exception as error:  # e.g. undecodable body: stay alive, say why
            return self._mark_stale(f"bad answer from {self.url}/metrics: {_short(error)}")
        # The server wrote the page somewhere inside the request: the midpoint is the
        # best guess, and keeps a slow answer under load from skewing the window.
        return self.ingest(text, at=(sent + received) / 2)

    def ingest(self, text: str, at: float | None = None) -> TelemetrySnapshot:
        """Take one page of /metrics text (scrape() calls this; tests feed it directly)."""
        try:
            raw = parse_metrics(text, at)
        except MalformedMetrics as error:
            return self._mark_stale(str(error))
        if self._scrapes and raw.at <= self._scrapes[-1].at:
            return self._last  # an out-of-order timestamp cannot make a rate
        if self._scrapes and is_restart(self._scrapes[-1], raw):
            self._restarts += 1
            self._scrapes.clear()
        previous = self._scrapes[-1] if self._scrapes else None
        self._scrapes.append(raw)
        # Keep exactly one scrape at or before the window's start: the baseline.
        while len(self._scrapes) >= 2 and self._scrapes[1].at <= raw.at - self.window_s:
            self._scrapes.popleft()
        snap = windowed(self._scrapes[0], raw, self.url)
        if previous is not None:
            self._record_history(windowed(previous, raw, self.url))
        snap.scraped_at = time.time()
        snap.restarts_seen = self._restarts
        snap.generation_tps_history = list(self._tps_history)
        snap.acceptance_history = list(self._acceptance_history)
        if self.checks is not None:
            try:
                snap.warnings = self.checks(snap)
            except Exception as error:  # a broken check must not stop the telemetry
                snap.warnings = [f"telemetry check failed: {_short(error)}"]
        self._last = snap
        return snap

    def _record_history(self, step: TelemetrySnapshot) -> None:
        """Per-scrape points for the sparklines (the window smooths, these show shape)."""
        if step.generation_tps is not None:
            self._tps_history.append(step.generation_tps)
        if step.acceptance_rate is not None:
            self._acceptance_history.append(step.acceptance_rate)

    def _mark_stale(self, reason: str) -> TelemetrySnapshot:
        self._last = replace(self._last, stale=True, error=reason)
        return self._last

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> MetricsScraper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]
