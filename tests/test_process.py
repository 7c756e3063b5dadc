"""Detached processes, for real: a child in its own session with a grandchild, then signals."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from backend.process import Detached, group_members

# The child starts a grandchild (same group), prints both pids, then waits. With
# IGNORE_TERM both ignore SIGTERM, so only the KILL step can end them.
FAMILY = """
import os, signal, subprocess, sys, time
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(os.getpid(), grandchild.pid, os.environ.get("QTUI_TEST_SECRET"), flush=True)
time.sleep(600)
"""
GRANDCHILD = """
import os, signal, time
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(600)
"""


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def family_pids(log: Path) -> tuple[int, int, str]:
    wait_for(lambda: log.exists() and log.read_text().endswith("\n"))
    child, grandchild, secret = log.read_text().split()
    return int(child), int(grandchild), secret


@pytest.fixture
def family(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Detached, Path]]:
    env = {"QTUI_TEST_SECRET": "s3cret"}
    if getattr(request, "param", False):
        env["IGNORE_TERM"] = "1"
    log = tmp_path / "family.log"
    process = Detached.spawn(
        [sys.executable, "-c", FAMILY, GRANDCHILD], log_path=log, env=env, cwd=tmp_path
    )
    try:
        yield process, log
    finally:
        process.signal_group(signal.SIGKILL)
        process.wait_gone(10)


def test_child_runs_in_its_own_session_with_its_grandchild_in_the_group(
    family: tuple[Detached, Path],
) -> None:
    process, log = family
    child, grandchild, secret = family_pids(log)
    assert child == process.pid == process.pgid
    assert os.getsid(child) == child != os.getsid(0)
    assert secret == "s3cret"  # by environment ...
    assert "s3cret" not in " ".join(psutil.Process(child).cmdline())  # ... not argv
    assert process.alive()
    assert {proc.pid for proc in process.members()} == {child, grandchild}
    assert {proc.pid for proc in group_members(process.pgid)} == {child, grandchild}


def test_sigterm_to_the_group_ends_child_and_grandchild(family: tuple[Detached, Path]) -> None:
    process, log = family
    family_pids(log)
    steps: list[str] = []
    assert process.kill_group(wait_s=10, steps=steps) == []
    assert steps == ["killpg TERM"]
    assert not process.alive() and process.members() == []
    assert process.reap() == -signal.SIGTERM


@pytest.mark.parametrize("family", [True], indirect=True)
def test_a_group_that_ignores_sigterm_is_killed(family: tuple[Detached, Path]) -> None:
    process, log = family
    _, grandchild, _ = family_pids(log)
    steps: list[str] = []
    assert process.kill_group(wait_s=1.0, steps=steps) == []
    assert steps == ["killpg TERM", "killpg KILL"]
    assert not psutil.pid_exists(grandchild) or (
        psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    )
    assert process.members() == []


def test_reattached_from_a_record_and_orphans_still_found(family: tuple[Detached, Path]) -> None:
    """A later qtui knows only pid + create time; a grandchild whose parent died is still ours."""
    process, log = family
    _, grandchild, _ = family_pids(log)
    later = Detached(process.pid, process.create_time, pgid=process.pgid)
    assert later.alive()
    assert later.signal_leader(signal.SIGKILL)
    wait_for(lambda: process.reap() is not None)
    assert not later.alive()
    assert [proc.pid for proc in later.members()] == [grandchild]  # re-parented, same group
    assert not later.wait_gone(0.3)
    assert later.kill_group(wait_s=10) == []
    assert later.wait_gone(5)


def test_a_recycled_pid_reads_as_not_alive_and_is_never_signalled(tmp_path: Path) -> None:
    """A record whose create time does not match the pid's process: another process owns it."""
    stranger = Detached.spawn(
        [sys.executable, "-c", GRANDCHILD], log_path=tmp_path / "stranger.log"
    )
    try:
        assert stranger.alive()
        recycled = Detached(stranger.pid, stranger.create_time - 3600.0)
        assert not recycled.alive()
        assert recycled.members() == []
        assert not recycled.signal_leader(signal.SIGKILL)
        assert not recycled.signal_group(signal.SIGKILL)
        assert recycled.kill_group(wait_s=0.5) == []
        assert recycled.wait_gone(0.1)
        assert stranger.alive()  # none of that reached the real owner of the pid
    finally:
        stranger.signal_group(signal.SIGKILL)
        stranger.wait_gone(10)


def test_a_child_that_exits_is_not_alive_and_keeps_its_code(tmp_path: Path) -> None:
    process = Detached.spawn(
        [sys.executable, "-c", "raise SystemExit(3)"], log_path=tmp_path / "quick.log"
    )
    assert process.wait_gone(20)
    assert process.reap() == 3 and not process.alive()
    # A zombie of someone else's reads as not alive too: here, our unreaped child seen
    # from a record.
    zombie = Detached.spawn([sys.executable, "-c", "pass"], log_path=tmp_path / "zombie.log")
    assert zombie.popen is not None
    wait_for(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE)
    assert not Detached(zombie.pid, zombie.create_time).alive()
    assert zombie.reap() == 0
