"""Processes qtui starts and outlives: the vLLM server, the AutoRound job.

Each one runs in its own session, so an SSH drop or a closed panel leaves it
running and its whole process group (EngineCore, TP workers, dataloader
workers) can be signalled at once. It is known by pid + create time: a later
qtui re-attaches from a state file, and a pid the kernel has since handed to
an unrelated process is never taken for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

CREATE_TIME_SLACK_S = 1.0
"""psutil's create time is derived from boot time and clock ticks: allow it to wobble."""
POLL_S = 0.1


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes whose process group is `pgid`.

    Every process is looked at, not just the leader's descendants: a worker whose
    parent died has been re-parented to init but is still in the group.
    """
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def create_time_of(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class Detached:
    """A child in its own session: the one qtui just spawned, or one a state file names.

    `pgid` is the leader's pid (a new session makes its leader the group's leader).
    For a child of this process, `popen` is kept: only waitpid tells the truth
    about it (and reaps it, keeping its exit code).
    """

    def __init__(
        self,
        pid: int,
        create_time: float,
        *,
        pgid: int | None = None,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.pid = pid
        self.create_time = create_time
        self.pgid = pid if pgid is None else pgid
        self.popen = popen

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Detached:
        """Start `argv` in a new session, stdout and stderr appended to `log_path`.

        `env` is added to this process's environment; secrets (API keys) go there,
        never into `argv`, which any user can read in `ps`.
        """
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        # A child that died at once is a zombie until reaped: its create time still reads.
        create_time = create_time_of(popen.pid)
        return cls(popen.pid, time.time() if create_time is None else create_time, popen=popen)

    # -- observing ------------------------------------------------------------------------
    def reap(self) -> int | None:
        """Our child's exit code once it has exited (None: running, or not our child)."""
        return self.popen.poll() if self.popen is not None else None

    def alive(self) -> bool:
        """The leader runs: its pid exists, with the recorded create time, and is no zombie."""
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > CREATE_TIME_SLACK_S:
                return False  # the pid was recycled by an unrelated process
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _group_number_reused(self) -> bool:
        """Another process now has the leader's pid, so the group number is not ours.

        The kernel hands out a pid again only once no process uses it as a process
        group id; a different process under that pid means our group is long gone.
        """
        if self.popen is not None or self.pgid != self.pid:
            return False
        created = create_time_of(self.pid)
        return created is not None and abs(created - self.create_time) > CREATE_TIME_SLACK_S

    def members(self) -> list[psutil.Process]:
        """Live processes of its group: the leader, what it started, orphans it left."""
        if self._group_number_reused():
            return []
        return group_members(self.pgid)

    # -- signalling -----------------------------------------------------------------------
    def signal_leader(self, sig: int) -> bool:
        """Send `sig` to the leader alone; False when it is gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def signal_group(self, sig: int) -> bool:
        """Send `sig` to every process of the group; False when the group is gone."""
        if self._group_number_reused():
            return False
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def wait_gone(self, timeout: float) -> bool:
        """Wait until the leader and every member have exited; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            if not self.alive() and not self.members():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)

    def kill_group(self, wait_s: float = 5.0, steps: list[str] | None = None) -> list[int]:
        """SIGTERM the group, wait, then SIGKILL what is left; returns the pids that survived.

        Each signal sent is appended to `steps` ("killpg TERM", "killpg KILL").
        """
        for sig, name in ((signal.SIGTERM, "killpg TERM"), (signal.SIGKILL, "killpg KILL")):
            if not self.members():
                break
            if steps is not None:
                steps.append(name)
            self.signal_group(sig)
            self.wait_gone(wait_s)
        self.reap()
        return [proc.pid for proc in self.members()]
