"""The line under a finished chat reply, for each way a reply can end."""

from __future__ import annotations

from backend.transcripts import Message
from tui.chat_stats import stats_line

STATS = {"ttft_s": 0.25, "decode_s": 2.0, "prompt_tokens": 12, "completion_tokens": 40}


def test_a_complete_reply_shows_its_speed_and_tokens() -> None:
    line = stats_line(Message("assistant", "hi", stats=STATS))
    assert line.startswith("TTFT 250 ms") and "in 12 / out 40" in line


def test_speculative_acceptance_is_added_when_measured() -> None:
    spec = {"acceptance_rate": 0.625, "mean_acceptance_length": 2.5}
    line = stats_line(Message("assistant", "hi", stats={**STATS, "spec": spec}))
    assert line.endswith(" · accept 62% (mean len 2.50)")


def test_a_stopped_or_failed_reply_says_so() -> None:
    assert stats_line(Message("assistant", status="cancelled")) == "■ stopped"
    assert stats_line(Message("assistant", status="cancelled", stats=STATS)).startswith(
        "■ stopped · TTFT 250 ms"
    )
    failed = Message("assistant", status="interrupted", error="server went away")
    assert stats_line(failed) == "⚠ interrupted: server went away"
    assert stats_line(Message("assistant", status="interrupted")) == "⚠ interrupted: interrupted"


def test_a_complete_reply_without_stats_says_done() -> None:
    assert stats_line(Message("assistant", "hi")) == "done"
