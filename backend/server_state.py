"""What a vLLM server is doing, as the state file and a poll describe it.

Plain data with no heavy imports, so the panel can show a server's state
before it has loaded pydantic, httpx or the launch planner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backend.config import ServeProfile
    from backend.vllm_log import LoadingStage


class Phase(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"
    NOT_RESPONDING = "not responding"
    """Running, ready once, and /health no longer answers (hung, frozen, deadlocked)."""

    @property
    def is_up(self) -> bool:
        return self in (
            Phase.STARTING, Phase.LOADING, Phase.READY, Phase.STOPPING, Phase.NOT_RESPONDING,
        )  # fmt: skip


@dataclass
class ServerRecord:
    """The state file: what was launched, so any later qtui can find it."""

    pid: int
    pgid: int
    create_time: float
    """psutil's process start time: guards against a recycled pid."""
    host: str
    port: int
    url: str
    profile_name: str
    profile: dict[str, Any]
    spec: str
    kv_cache_dtype: str
    started_at: float
    log_path: str
    command: str
    """The masked command line, for display."""
    intent: str = "run"
    """run | stopping | stopped | failed: what the owner last meant or found."""
    exit_code: int | None = None
    reason: str | None = None
    stopped_at: float | None = None
    notes: list[str] = field(default_factory=list)
    """What the launch check told the user (aliases mapped, warnings)."""
    ready_at: float | None = None
    """When /health first answered 200 (seen by the launcher's wait)."""
    stop_before_s: float | None = None
    """How long stopping the previous server took, for a restart or an `m` toggle."""
    unresponsive_since: float | None = None
    """When a server that had been ready was first seen not answering /health."""

    @cached_property
    def serve_profile(self) -> ServeProfile:
        # Imported here: reading state (the panel's first frame, `serve status`)
        # must not pay for pydantic until a profile is really needed.
        from backend.config import ServeProfile

        return ServeProfile.model_validate(self.profile)

    @property
    def ready_after_s(self) -> float | None:
        """Launch to ready: what a start, or the start half of a toggle, cost."""
        return None if self.ready_at is None else max(0.0, self.ready_at - self.started_at)

    @property
    def switch_s(self) -> float | None:
        """A restart or toggle, stop to ready: how long the server was away."""
        ready = self.ready_after_s
        return None if ready is None or self.stop_before_s is None else self.stop_before_s + ready


@dataclass
class ServerStatus:
    phase: Phase
    record: ServerRecord | None
    reason: str | None = None
    exit_code: int | None = None
    stage: LoadingStage | None = None
    """While starting or loading: what vLLM is doing, from its log."""

    @property
    def uptime_s(self) -> float | None:
        if self.record is None or not self.phase.is_up:
            return None
        return max(0.0, time.time() - self.record.started_at)

    def to_json(self) -> dict[str, Any]:
        record = self.record
        return {
            "phase": self.phase.value,
            "pid": record.pid if record and self.phase.is_up else None,
            "pgid": record.pgid if record and self.phase.is_up else None,
            "url": record.url if record else None,
            "profile": record.profile_name if record else None,
            "model": record.profile.get("model") if record else None,
            "spec": record.spec if record else None,
            "kv_cache_dtype": record.kv_cache_dtype if record else None,
            "uptime_s": round(self.uptime_s, 1) if self.uptime_s is not None else None,
            "started_at": _iso(record.started_at) if record else None,
            "ready_after_s": _rounded(record.ready_after_s) if record else None,
            "stop_before_s": _rounded(record.stop_before_s) if record else None,
            "log": record.log_path if record else None,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "stage": self.stage.describe() if self.stage else None,
        }


@dataclass
class StopReport:
    steps: list[str] = field(default_factory=list)
    seconds: float = 0.0
    exit_code: int | None = None
    leftover_pids: list[int] = field(default_factory=list)


def took(record: ServerRecord | None) -> str:
    """What the last start or toggle cost: `in 24.1 s (stop 0.4 s + start 23.7 s)`."""
    if record is None or record.ready_after_s is None:
        return ""
    if record.switch_s is None:
        return f" in {record.ready_after_s:.1f} s"
    return (
        f" in {record.switch_s:.1f} s (stop {record.stop_before_s or 0.0:.1f} s "
        f"+ start {record.ready_after_s:.1f} s)"
    )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")
