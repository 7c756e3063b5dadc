"""Hold off full garbage collections while the screen must stay live (a reply streaming in).

A full (oldest-generation) collection walks every object the process keeps,
and a Textual app showing a long reply keeps hundreds of thousands (cached
strips, regions, box models). Measured on the chat latency bench at 2,000
tok/s: 14 full collections in a 12 s reply stalled the event loop for 2.2 s
in all, up to 350 ms at a time, while a key press waits behind each one.
Young collections keep running (short-lived cycles are still freed); only
the threshold that starts a full one is raised, and put back on release.
Textual's own `App.PAUSE_GC_ON_SCROLL` does the same for smooth scrolling.

The garbage of the held time is then collected in one go (about 0.5 s after
a 20k-token reply), so a holder releases when the user is not typing.
"""

from __future__ import annotations

import gc

_FULL_COLLECTION_HELD = 1_000_000
"""Young collections between full ones while held: never, in practice."""

_holders = 0
_saved_threshold: tuple[int, int, int] | None = None


def hold() -> None:
    """No full collection starts until every hold is released (holds nest)."""
    global _holders, _saved_threshold
    if _holders == 0:
        _saved_threshold = gc.get_threshold()
        young, middle, _ = _saved_threshold
        gc.set_threshold(young, middle, _FULL_COLLECTION_HELD)
    _holders += 1


def release(*, collect: bool = False) -> None:
    """Undo one hold; with the last one, restore the threshold and, if `collect`, collect now."""
    global _holders, _saved_threshold
    if _holders == 0:
        return
    _holders -= 1
    if _holders == 0 and _saved_threshold is not None:
        gc.set_threshold(*_saved_threshold)
        _saved_threshold = None
        if collect:
            gc.collect()


def held() -> bool:
    return _holders > 0
