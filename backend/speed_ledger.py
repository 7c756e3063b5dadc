"""Does speculative decoding pay off here? Per-reply decode speed, kept by spec setting.

Users toggle MTP to make replies faster, and it does not always help (a
drafter that is rarely right, creative text, a busy server). The only honest
answer is their own replies: every complete chat reply to the server qtui runs
records its decode tok/s under the profile, model and spec setting it was
served with. Toggling restarts the server, so the ledger lives in the state
dir; the comparison is the median with spec on over the median with it off.
Short replies are left out: their decode time is mostly noise.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import paths
from backend.atomic import write_json_atomic
from backend.chat import root_url
from backend.supervisor import ServerSupervisor

LEDGER_NAME = "speed.json"
MIN_COMPLETION_TOKENS = 32
"""Replies shorter than this are not timed: a few tokens say little about decode speed."""
KEPT_PER_SETTING = 20
"""Newest replies kept per spec setting: the comparison follows recent use."""


def spec_label(record: Any) -> str:
    """How a ServerRecord decoded: "off", or the method and its draft tokens ("mtp:1")."""
    if not record.spec or record.spec == "off":
        return "off"
    speculative = (record.profile or {}).get("speculative") or {}
    tokens = speculative.get("num_speculative_tokens")
    return f"{record.spec}:{tokens}" if tokens else str(record.spec)


def _setup_key(record: Any) -> str:
    return f"{record.profile_name}|{(record.profile or {}).get('model', '')}"


@dataclass(frozen=True)
class SettingSpeed:
    label: str
    median_tps: float
    replies: int


@dataclass(frozen=True)
class SpeedComparison:
    """Decode speeds of one profile and model, by spec setting; `running` is the live one."""

    running: str
    settings: dict[str, SettingSpeed]

    @property
    def speedup(self) -> float | None:
        """Median tok/s of the running spec setting over the median with spec off."""
        on, off = self.settings.get(self.running), self.settings.get("off")
        if self.running == "off" or on is None or off is None:
            return None
        return on.median_tps / off.median_tps

    def describe(self) -> str:
        """One line for the panel, or what to do to get one."""
        on, off = self.settings.get(self.running), self.settings.get("off")
        if self.speedup is not None and on is not None and off is not None:
            return (
                f"{self.running} {self.speedup:.2f}x vs off: {on.median_tps:.1f} vs "
                f"{off.median_tps:.1f} tok/s (median of {on.replies} and {off.replies} replies)"
            )
        if self.running == "off":
            others = [s for label, s in self.settings.items() if label != "off"]
            if off is not None and others:
                best = max(others, key=lambda s: s.median_tps)
                return (
                    f"spec off: {off.median_tps:.1f} tok/s; {best.label} ran "
                    f"{best.median_tps / off.median_tps:.2f}x ({best.median_tps:.1f} tok/s)"
                )
            return "speed-up: chat with spec on too (m) to compare"
        return "speed-up: chat with spec off too (m) to compare"

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "speedup": self.speedup,
            "settings": {
                label: {"median_tps": s.median_tps, "replies": s.replies}
                for label, s in self.settings.items()
            },
        }


class SpeedLedger:
    """The per-reply speeds of this machine's servers (a small JSON file, flocked)."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.path = (state_dir or paths.state_dir()) / LEDGER_NAME

    def record(
        self, record: Any, tokens_per_s: float | None, completion_tokens: int | None
    ) -> bool:
        """Add one complete reply served by `record`; False when it is too short to count."""
        if not tokens_per_s or tokens_per_s <= 0:
            return False
        if (completion_tokens or 0) < MIN_COMPLETION_TOKENS:
            return False
        with self._locked() as data:
            setting = data.setdefault(_setup_key(record), {}).setdefault(spec_label(record), [])
            setting.append({"tps": round(tokens_per_s, 3), "tokens": completion_tokens,
                            "at": round(time.time(), 1)})  # fmt: skip
            del setting[:-KEPT_PER_SETTING]
        return True

    def comparison(self, record: Any) -> SpeedComparison:
        """The speeds measured for `record`'s profile and model, with its spec setting running."""
        settings: dict[str, SettingSpeed] = {}
        for label, samples in self._read().get(_setup_key(record), {}).items():
            speeds = [float(s["tps"]) for s in samples if isinstance(s, dict) and "tps" in s]
            if speeds:
                settings[label] = SettingSpeed(label, statistics.median(speeds), len(speeds))
        return SpeedComparison(spec_label(record), settings)

    def _read(self) -> dict[str, Any]:
        try:
            value = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: measuring starts over
        return value if isinstance(value, dict) else {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under an exclusive lock (the panel and `qtui chat` may both write)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            write_json_atomic(self.path, data, indent=None)


def record_reply(
    url: str,
    tokens_per_s: float | None,
    completion_tokens: int | None,
    state_dir: Path | None = None,
) -> SpeedComparison | None:
    """Count a complete reply from `url` if that is the server qtui runs; its comparison then.

    None when `url` is another server (its spec setting is unknown to qtui).
    """
    record = ServerSupervisor(None, state_dir=state_dir).load_record()
    if record is None or root_url(url) != root_url(record.url):
        return None
    ledger = SpeedLedger(state_dir)
    ledger.record(record, tokens_per_s, completion_tokens)
    return ledger.comparison(record)
