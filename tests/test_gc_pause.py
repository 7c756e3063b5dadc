"""Full garbage collections held while a reply streams, and released when the user is idle."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest

from tui import gc_pause


@pytest.fixture(autouse=True)
def restored_threshold() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    while gc_pause.held():
        gc_pause.release()
    gc.set_threshold(*before)


def test_holds_nest_and_the_last_release_restores_the_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    gc_pause.hold()
    gc_pause.hold()
    young, middle, full = gc.get_threshold()
    assert (young, middle) == (700, 10) and full >= 1_000_000
    gc_pause.release()
    assert gc_pause.held() and gc.get_threshold()[2] >= 1_000_000
    gc_pause.release()
    assert not gc_pause.held() and gc.get_threshold() == (700, 10, 10)
    gc_pause.release()  # one too many: nothing to undo
    assert gc.get_threshold() == (700, 10, 10)


def survivors() -> list[list[int]]:
    """Objects that live on (as a long reply's widgets do): they make full collections due."""
    return [[n] for n in range(200_000)]


def test_no_full_collection_runs_while_held() -> None:
    full_runs: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full_runs.append(1)

    gc.callbacks.append(count)
    try:
        gc.set_threshold(700, 10, 10)
        kept = survivors()
        assert full_runs, "unheld, this much makes a full collection run"
        full_runs.clear()
        gc_pause.hold()
        kept += survivors()
        assert full_runs == []
        started = time.perf_counter()
        gc_pause.release(collect=True)
        assert full_runs == [1], "the held collection runs on release"
        assert time.perf_counter() - started < 5
    finally:
        gc.callbacks.remove(count)
