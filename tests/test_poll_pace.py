"""The watcher's pace: quick while anything moves, slower once the server sits still."""

from __future__ import annotations

from backend.server_state import Phase
from tui.app import STEADY_AFTER, STEADY_PACE, STEADY_SAMPLE_EVERY, PollPace
from tui.widgets.status_bar import format_uptime


def test_a_still_server_is_polled_slower_and_a_change_brings_the_quick_pace_back() -> None:
    pace = PollPace()
    ready = (Phase.READY, (123, "http://127.0.0.1:8000"))
    for _ in range(STEADY_AFTER):
        pace.observe(ready, busy=False)
        assert pace.interval(1.0) == 1.0
    pace.observe(ready, busy=False)
    assert pace.steady and pace.interval(1.0) == STEADY_PACE
    pace.observe(ready, busy=True)  # a request runs: figures move every second
    assert pace.interval(1.0) == 1.0
    for _ in range(STEADY_AFTER):
        pace.observe(ready, busy=False)
    assert pace.steady
    pace.observe((Phase.NOT_RESPONDING, ready[1]), busy=False)  # a new phase
    assert not pace.steady


def test_uptime_shows_seconds_only_in_the_first_minute() -> None:
    assert [format_uptime(s) for s in (None, 0, 59.9, 60, 3599, 3600, 7322)] == [
        "-", "0s", "59s", "1m", "59m", "1h00m", "2h02m",
    ]  # fmt: skip


def test_a_steady_server_is_scraped_every_few_polls_until_something_wakes_the_watcher() -> None:
    pace = PollPace()
    ready = (Phase.READY, (123, "http://127.0.0.1:8000"))
    while not pace.steady:
        assert pace.sample_due  # not yet steady: every poll
        pace.observe(ready, busy=False)
    due = []
    for _ in range(2 * STEADY_SAMPLE_EVERY):
        due.append(pace.sample_due)
        pace.observe(ready, busy=False)
    assert due.count(True) == 2
    pace.wake()  # a user's action or a new log line
    assert pace.sample_due and not pace.steady
