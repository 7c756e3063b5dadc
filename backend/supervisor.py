"""The vLLM server supervisor: start, watch, stop, and re-attach after a restart.

The server runs in its own session (so an SSH drop or a killed panel leaves it
running), writes to a log file in the state dir, and is described by a state
file that any later `qtui` reads to re-attach. The phase is always derived
from the world (is the process alive, does /health answer) rather than
remembered, so two views of one server can never disagree for long.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from backend import paths
from backend.atomic import write_json_atomic
from backend.config import ServeProfile
from backend.engine import Engine
from backend.gpu import gpu_memory_held_by
from backend.process import Detached, group_members
from backend.serve_args import LaunchPlan, masked_command, plan_launch
from backend.server_state import Phase, ServerRecord, ServerStatus, StopReport, took
from backend.vllm_log import (
    explain,
    loading_stage,
    shows_loading,
    tail_lines,
)

__all__ = [
    "Phase", "ServerRecord", "ServerStatus", "ServerSupervisor", "StopReport",
    "SupervisorError", "group_members", "took",
]  # fmt: skip


class SupervisorError(RuntimeError):
    """A start or stop could not be done; the message is one line with the fix."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ServerSupervisor:
    """Owns at most one vLLM server per state dir."""

    def __init__(self, engine: Engine | None, state_dir: Path | None = None) -> None:
        self.engine = engine
        self.state_dir = state_dir or paths.state_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.state_dir / "server.json"
        self._lock_path = self.state_dir / "server.lock"
        self._child: Detached | None = None
        """The server this supervisor spawned (others are re-attached from the record)."""
        self._http = httpx.Client(timeout=httpx.Timeout(2.0, connect=1.0))

    # -- state file -------------------------------------------------------
    def load_record(self) -> ServerRecord | None:
        try:
            data = json.loads(self.state_path.read_text())
            return ServerRecord(**data)
        except (OSError, ValueError, TypeError):
            return None

    def _save_record(self, record: ServerRecord) -> None:
        write_json_atomic(self.state_path, asdict(record))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One start/stop at a time across every qtui process on this machine."""
        with open(self._lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- observing --------------------------------------------------------
    def _process(self, record: ServerRecord) -> Detached:
        """The server's process: our own child when we spawned it, else the record's."""
        if self._child is not None and self._child.pid == record.pid:
            return self._child
        return Detached(record.pid, record.create_time, pgid=record.pgid)

    def _leader_alive(self, record: ServerRecord) -> bool:
        """Is the server's leader process still running?"""
        return self._process(record).alive()

    def _reap(self) -> int | None:
        """Our child's exit code once it has exited (None: running, or not ours)."""
        return self._child.reap() if self._child is not None else None

    def health_ok(self, url: str) -> bool:
        try:
            return self._http.get(f"{url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def status(self) -> ServerStatus:
        record = self.load_record()
        if record is None:
            return ServerStatus(Phase.STOPPED, None)
        if self._leader_alive(record):
            if record.intent == "stopping":
                return ServerStatus(Phase.STOPPING, record)
            if self.health_ok(record.url):
                if record.unresponsive_since is not None:
                    self._note_unresponsive(record, None)
                return ServerStatus(Phase.READY, record)
            if record.ready_at is not None:
                # It answered before: not loading again, but hung (or frozen by SIGSTOP).
                if record.unresponsive_since is None:
                    self._note_unresponsive(record, time.time())
                since = datetime.fromtimestamp(record.unresponsive_since or time.time())
                reason = (
                    f"/health has not answered since {since:%H:%M:%S}: the server is hung or "
                    "frozen; stop it (x, `qtui serve stop`) or wait"
                )
                return ServerStatus(Phase.NOT_RESPONDING, record, reason)
            lines = tail_lines(Path(record.log_path), 400)
            loading = shows_loading(lines)
            return ServerStatus(
                Phase.LOADING if loading else Phase.STARTING, record, stage=loading_stage(lines)
            )
        if record.intent in ("stopping", "stopped"):
            return ServerStatus(Phase.STOPPED, record, record.reason, record.exit_code)
        if record.intent == "failed":
            return ServerStatus(Phase.FAILED, record, record.reason, record.exit_code)
        # It died without being asked to: find out why, and remember it.
        code = self._reap()
        record.exit_code = code if code is not None else record.exit_code
        record.reason = self.failure_reason(record)
        record.intent = "failed"
        record.stopped_at = time.time()
        self._save_record(record)
        return ServerStatus(Phase.FAILED, record, record.reason, record.exit_code)

    def _note_unresponsive(self, record: ServerRecord, since: float | None) -> None:
        """Written once when /health stops answering and once when it answers again.

        Without the lock: status() runs inside start()'s locked section, and a second
        flock from this process would wait for itself. The write is one atomic rename of a
        record re-read just before, for the same server still meant to run.
        """
        current = self.load_record()
        if current is not None and current.pid == record.pid and current.intent == "run":
            current.unresponsive_since = since
            self._save_record(current)
        record.unresponsive_since = since

    def failure_reason(self, record: ServerRecord) -> str:
        advice, last = explain(tail_lines(Path(record.log_path), 600))
        if advice:
            return advice
        code = f" (exit code {record.exit_code})" if record.exit_code is not None else ""
        return f"vLLM exited{code}: {last}" if last else f"vLLM exited{code}; see {record.log_path}"

    # -- starting ---------------------------------------------------------
    def plan(
        self, profile: ServeProfile, *, check_mtp: bool = True, check_fit: bool = True
    ) -> LaunchPlan:
        if self.engine is None:
            raise SupervisorError("no vLLM engine configured: set QTUI_VLLM")
        return plan_launch(profile, self.engine, check_mtp=check_mtp, check_fit=check_fit)

    def start(
        self,
        profile_name: str,
        profile: ServeProfile,
        *,
        wait: bool = True,
        timeout_s: float = 900.0,
        on_phase: Callable[[ServerStatus], None] | None = None,
        check_mtp: bool = True,
        check_fit: bool = True,
    ) -> ServerStatus:
        """Launch the server; with `wait`, return once /health answers 200.

        Raises SupervisorError (with vLLM's exit code when it died) on failure,
        after making sure nothing of the attempt is left running.
        """
        with self._locked():
            current = self.status()
            if current.phase is Phase.NOT_RESPONDING and current.record:
                raise SupervisorError(
                    f"the server at {current.record.url} (pid {current.record.pid}) is not "
                    f"responding; {current.reason}"
                )
            if current.phase.is_up and current.record:
                raise SupervisorError(
                    f"a server is already {current.phase.value} (pid {current.record.pid}, "
                    f"{current.record.url}): stop it first, or use restart"
                )
            plan = self.plan(profile, check_mtp=check_mtp, check_fit=check_fit)
            record = self._spawn(profile_name, profile, plan)
        if not wait:
            return self.status()
        return self.wait_ready(record, timeout_s=timeout_s, on_phase=on_phase)

    def _spawn(self, profile_name: str, profile: ServeProfile, plan: LaunchPlan) -> ServerRecord:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        logs_dir = self.state_dir / "logs"
        logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = logs_dir / f"server-{stamp}-{profile.port}.log"
        command = masked_command(plan.argv)
        with open(log_path, "ab") as log:
            log.write(f"# qtui: {command}\n".encode())
            for note in plan.notes:
                log.write(f"# qtui: {note}\n".encode())
        self._child = child = Detached.spawn(plan.argv, log_path=log_path, env=plan.env)
        profile = plan.profile or profile
        record = ServerRecord(
            pid=child.pid,
            pgid=child.pgid,
            create_time=child.create_time,
            host=profile.host,
            port=profile.port,
            url=plan.url,
            profile_name=profile_name,
            profile=profile.model_dump(mode="json"),
            spec=profile.speculative.method,
            kv_cache_dtype=profile.kv_cache_dtype,
            started_at=time.time(),
            log_path=str(log_path),
            command=command,
            notes=list(plan.notes),
        )
        self._save_record(record)
        return record

    def wait_ready(
        self,
        record: ServerRecord,
        *,
        timeout_s: float = 900.0,
        on_phase: Callable[[ServerStatus], None] | None = None,
        poll_s: float = 0.25,
    ) -> ServerStatus:
        deadline = time.monotonic() + timeout_s
        last_phase: tuple[Phase, str | None] | None = None
        while True:
            status = self.status()
            # A new phase, a new loading stage, or a compile that turned slow.
            seen = (status.phase, status.stage.describe_key() if status.stage else None)
            if seen != last_phase:
                last_phase = seen
                if on_phase:
                    on_phase(status)
            if status.phase == Phase.READY:
                return self._mark_ready(status)
            if status.phase in (Phase.FAILED, Phase.STOPPED):
                self._process(record).kill_group()
                raise SupervisorError(
                    status.reason or "vLLM stopped before it was ready", status.exit_code
                )
            if time.monotonic() > deadline:
                self.stop()
                raise SupervisorError(
                    f"vLLM was not ready after {timeout_s:.0f} s; stopped it. See {record.log_path}"
                )
            time.sleep(poll_s)

    def _mark_ready(self, status: ServerStatus) -> ServerStatus:
        """Write down when the server became ready (once), for the time a start cost."""
        with self._locked():
            record = self.load_record()
            launched = status.record
            if (
                record is not None
                and launched is not None
                and record.pid == launched.pid
                and record.ready_at is None
            ):
                record.ready_at = time.time()
                self._save_record(record)
                status.record = record
        return status

    # -- stopping ---------------------------------------------------------
    def stop(
        self, *, first_wait_s: float = 15.0, second_wait_s: float = 10.0, term_wait_s: float = 5.0
    ) -> StopReport:
        """SIGINT, wait, SIGINT again, then killpg TERM, then KILL; confirm the group is gone."""
        report = StopReport()
        started = time.monotonic()
        with self._locked():
            record = self.load_record()
            if record is None:
                report.steps.append("no server recorded")
                return report
            # Remember who was in the group: after they exit, NVML must not show them
            # holding GPU memory (vLLM #55510: orphaned workers keep it).
            server = self._process(record)
            seen_pids = [proc.pid for proc in server.members()]
            if server.alive():
                record.intent = "stopping"
                self._save_record(record)
                # A frozen group (SIGSTOP, a debugger) acts on no signal until continued.
                server.signal_group(signal.SIGCONT)
                for step, wait in (("SIGINT", first_wait_s), ("SIGINT again", second_wait_s)):
                    report.steps.append(step)
                    server.signal_leader(signal.SIGINT)
                    if server.wait_gone(wait):
                        break
            else:
                report.steps.append("leader already gone")
            report.leftover_pids = server.kill_group(term_wait_s, report.steps)
            report.exit_code = self._reap()
            record.intent = "stopped"
            record.exit_code = report.exit_code
            record.stopped_at = time.time()
            self._save_record(record)
        report.seconds = time.monotonic() - started
        held = gpu_memory_held_by(seen_pids)
        if held:
            gib = sum(held.values()) / 2**30
            raise SupervisorError(
                f"the server's processes {sorted(held)} still hold {gib:.1f} GiB of GPU memory "
                "after stopping: check `nvidia-smi` and kill them"
            )
        if report.leftover_pids:
            raise SupervisorError(
                f"processes {report.leftover_pids} of the server survived SIGKILL: "
                "check them with `ps` (they may be stuck in the kernel)"
            )
        return report

    def restart(
        self,
        profile_name: str | None = None,
        profile: ServeProfile | None = None,
        **start_kwargs: Any,
    ) -> ServerStatus:
        """Stop, then start with `profile` (default: what was running)."""
        record = self.load_record()
        if profile is None or profile_name is None:
            if record is None:
                raise SupervisorError("nothing to restart: no server was started yet")
            profile_name, profile = record.profile_name, record.serve_profile
        stopped = self.stop()
        status = self.start(profile_name, profile, **start_kwargs)
        with self._locked():
            current = self.load_record()
            if (
                current is not None
                and status.record is not None
                and current.pid == status.record.pid
            ):
                current.stop_before_s = stopped.seconds
                self._save_record(current)
                status.record = current
        return status

    def toggle_spec(self, **start_kwargs: Any) -> ServerStatus:
        """Restart the running profile with speculative decoding flipped on/off."""
        record = self.load_record()
        if record is None:
            raise SupervisorError("no server to toggle: start one first")
        profile = record.serve_profile
        toggled = profile.model_copy(update={"speculative": profile.speculative.toggled()})
        return self.restart(record.profile_name, toggled, **start_kwargs)

    def close(self) -> None:
        self._http.close()
