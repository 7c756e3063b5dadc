"""Checks on the live telemetry that other panels do not make.

- Silent drafter failure: speculative decoding runs, drafts are made, and
  almost none is accepted. The server stays up and just gets slower; with MTP
  the usual cause is an MTP head whose `mtp.fc` was quantized or dropped by the
  quantizer, with a draft model one that does not match the target. (ngram and
  suffix drafts are guesses from the text: a low rate there is not a fault.)
- Running config vs requested: the KV-cache dtype the server reports, and
  whether spec-decode counters exist, against the profile that was launched.
- Startup readout: what the server said about memory while loading.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backend.engine import FORK_KV_DTYPE_ALIASES
from backend.metrics import MetricsScraper, TelemetrySnapshot
from backend.vllm_log import clean_line

MIN_DRAFTS_FOR_VERDICT = 20
"""Drafts (since the server's spec setting started) before a near-zero acceptance is called
a failure. Counted over the whole run, not a time window, so a slow or loaded machine
reaches the verdict after the same evidence as a fast one."""
DEAD_ACCEPTANCE_RATE = 0.02
DEAD_MEAN_LENGTH = 1.02

# vLLM names one dtype several ways; these pairs mean the same cache.
_SAME_KV_DTYPE = {"fp8": "fp8_e4m3"}


@dataclass(frozen=True)
class Expected:
    """What the launched profile asked for (from the supervisor's ServerRecord)."""

    spec_method: str = "off"
    kv_cache_dtype: str = "auto"

    @classmethod
    def from_record(cls, record: Any) -> Expected:
        """From a backend.supervisor.ServerRecord (duck-typed: spec, kv_cache_dtype)."""
        return cls(spec_method=record.spec or "off", kv_cache_dtype=record.kv_cache_dtype or "auto")


# Learned drafters, which should agree with the target most of the time, and
# what makes one accept nothing.
_DEAD_DRAFTER_CAUSE = {
    "mtp": "its weights do not predict this model (untrained or from another model), or "
    "mtp.fc was left out or skipped; run `qtui mtp inspect` on the checkpoint",
    "draft_model": "the draft model does not match the target (another tokenizer, family "
    "or fine-tune?)",
    "eagle3": "the EAGLE-3 head does not match the target (trained for another model?)",
}


def silent_drafter_failure(
    snap: TelemetrySnapshot, spec_method: str, min_drafts: int = MIN_DRAFTS_FOR_VERDICT
) -> str | None:
    """A warning when a learned drafter's drafts since the server started are (almost) never
    accepted. A head that worked and then stopped cannot happen within one run (the weights
    do not change), so the whole run is the right evidence, and it stays when idle."""
    cause = _DEAD_DRAFTER_CAUSE.get(spec_method)
    totals = snap.spec_run
    if cause is None or not snap.spec_decode or totals is None:
        return None
    if totals.drafts < min_drafts:
        return None
    rate = totals.acceptance_rate or 0.0
    length = totals.mean_acceptance_length or 1.0
    if rate > DEAD_ACCEPTANCE_RATE and length > DEAD_MEAN_LENGTH:
        return None
    name = "MTP" if spec_method == "mtp" else spec_method
    return (
        f"{name} is on but accepts almost nothing ({rate:.1%} of draft tokens, mean length "
        f"{length:.2f} over {totals.drafts:.0f} drafts since it started): {cause}"
    )


def _canonical_kv_dtype(name: str) -> str:
    name = FORK_KV_DTYPE_ALIASES.get(name, name).lower()
    return _SAME_KV_DTYPE.get(name, name)


def config_mismatches(snap: TelemetrySnapshot, expected: Expected) -> list[str]:
    """Warnings where the running server differs from what the profile requested."""
    if snap.stale or snap.scraped_at is None:
        return []
    found: list[str] = []
    running = snap.cache_dtype
    if running is not None and _canonical_kv_dtype(running) != _canonical_kv_dtype(
        expected.kv_cache_dtype
    ):
        found.append(
            f"the server runs KV-cache dtype {running!r} but the profile asks for "
            f"{expected.kv_cache_dtype!r}: a server started elsewhere, or vLLM overrode it"
        )
    spec_requested = expected.spec_method != "off"
    if spec_requested and not snap.spec_decode:
        found.append(
            f"speculative decoding ({expected.spec_method}) was requested but the server "
            "reports no spec-decode counters: it runs without a drafter (see its log)"
        )
    elif snap.spec_decode and not spec_requested:
        found.append(
            "the server runs speculative decoding although the profile has it off: "
            "a server started elsewhere?"
        )
    return found


class TelemetryChecks:
    """The checks for one launched server, callable as MetricsScraper's `checks`."""

    def __init__(self, expected: Expected, min_drafts: int = MIN_DRAFTS_FOR_VERDICT) -> None:
        self.expected = expected
        self.min_drafts = min_drafts

    def __call__(self, snap: TelemetrySnapshot) -> list[str]:
        warnings = config_mismatches(snap, self.expected)
        dead_drafter = silent_drafter_failure(snap, self.expected.spec_method, self.min_drafts)
        if dead_drafter:
            warnings.insert(0, dead_drafter)
        return warnings


def scraper_for(record: Any, window_s: float = 10.0) -> MetricsScraper:
    """A scraper of a supervisor's ServerRecord, with its checks wired in."""
    return MetricsScraper(
        record.url, window_s=window_s, checks=TelemetryChecks(Expected.from_record(record))
    )


# -- startup readout from the server log ---------------------------------
_NUMBER = r"(\d[\d,]*(?:\.\d+)?)"
_READOUT_PATTERNS: dict[str, re.Pattern[str]] = {
    # GPU: "Model loading took 15.26 GiB memory and 12.3 seconds"
    "model_load": re.compile(rf"Model loading took {_NUMBER} GiB(?: memory)? and {_NUMBER} s"),
    # CPU has no such line: the checkpoint size and the weight loading time instead.
    "checkpoint_size": re.compile(rf"Checkpoint size: {_NUMBER} GiB"),
    "weights_time": re.compile(rf"Loading weights took {_NUMBER} s"),
    "kv_available": re.compile(rf"Available KV cache memory: {_NUMBER} GiB"),
    # CPU: "Explicitly set (0.25/8.46) GiB for KV cache on node 0."
    "kv_set_cpu": re.compile(rf"set \({_NUMBER}/{_NUMBER}\) GiB for KV cache"),
    "kv_tokens": re.compile(rf"(?:GPU|CPU)? ?KV cache size: {_NUMBER} tokens"),
    "concurrency": re.compile(rf"Maximum concurrency for {_NUMBER} tokens per request: {_NUMBER}x"),
}
_STARTUP_DONE = "Starting vLLM server on"


@dataclass
class StartupReadout:
    """What the server reported while loading; None where it said nothing."""

    model_load_gib: float | None = None
    model_load_s: float | None = None
    kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    """How many requests of `tokens_per_request` tokens fit in the KV cache at once."""
    tokens_per_request: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def empty(self) -> bool:
        return all(value is None for value in asdict(self).values())


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def parse_startup(lines: Iterable[str]) -> StartupReadout:
    """The startup readout from log lines (raw or cleaned); later lines win."""
    readout = StartupReadout()
    checkpoint_gib: float | None = None
    weights_s: float | None = None
    for raw in lines:
        line = clean_line(raw)
        for key, pattern in _READOUT_PATTERNS.items():
            match = pattern.search(line)
            if not match:
                continue
            first = _num(match.group(1))
            if key == "model_load":
                readout.model_load_gib, readout.model_load_s = first, _num(match.group(2))
            elif key == "checkpoint_size":
                checkpoint_gib = first
            elif key == "weights_time":
                weights_s = first
            elif key in ("kv_available", "kv_set_cpu"):
                readout.kv_cache_gib = first
            elif key == "kv_tokens":
                readout.kv_cache_tokens = int(first)
            elif key == "concurrency":
                readout.tokens_per_request = int(first)
                readout.max_concurrency = _num(match.group(2))
    if readout.model_load_gib is None:
        readout.model_load_gib = checkpoint_gib
    if readout.model_load_s is None:
        readout.model_load_s = weights_s
    return readout


def startup_readout(log_path: Path, max_lines: int = 20_000) -> StartupReadout:
    """Read the log from its start until the server said it is listening."""
    lines: list[str] = []
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            for count, line in enumerate(handle):
                lines.append(line)
                if _STARTUP_DONE in line or count >= max_lines:
                    break
    except OSError:
        return StartupReadout()
    return parse_startup(lines)
