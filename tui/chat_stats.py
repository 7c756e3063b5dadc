"""The line under a finished chat reply: speed, tokens, speculative acceptance, outcome."""

from __future__ import annotations

from backend.chat import ReplyStats
from backend.transcripts import Message as TranscriptMessage


def stats_line(message: TranscriptMessage) -> str:
    stats = message.stats or {}
    summary = ReplyStats(
        ttft_s=stats.get("ttft_s"),
        decode_s=stats.get("decode_s"),
        prompt_tokens=stats.get("prompt_tokens"),
        completion_tokens=stats.get("completion_tokens"),
    ).summary()
    spec = stats.get("spec") or {}
    if spec.get("acceptance_rate") is not None:
        summary += (
            f" · accept {spec['acceptance_rate']:.0%}"
            f" (mean len {spec.get('mean_acceptance_length') or 0:.2f})"
        )
    if message.status == "cancelled":
        return f"■ stopped · {summary}" if summary else "■ stopped"
    if message.status != "complete":
        reason = message.error or message.status
        return f"⚠ {message.status}: {reason}" + (f" · {summary}" if summary else "")
    return summary or "done"
