"""GpuSampler: a stand-in at the NVML boundary (this machine has no NVIDIA GPU), real psutil.

The real sampler runs on the GPU machine as `python -m backend.gpu` (see the report of issue 3).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from backend.gpu import (
    HOST_PIDS_NOTE,
    UNATTRIBUTED_NOTE,
    GpuSampler,
    Nvml,
    NvmlCallError,
    NvmlUnavailable,
    gpu_memory_held_by,
    gpu_summary,
    visible_gpu_indices,
)

GIB = 1 << 30
# Linux's pid_max is at most 2**22: these PIDs name no process here, like the host
# PIDs NVML reports inside a container.
HOST_PID = 2**22 + 4242


@dataclass
class FakeGpu:
    name: str
    used: int
    total: int
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    power_supported: bool = True
    memory_fails: bool = False


class FakeNvml(Nvml):
    """Stand-in for the pynvml boundary: same methods, canned devices."""

    def __init__(self, gpus: list[FakeGpu], init_error: str | None = None) -> None:
        super().__init__()
        self.gpus = gpus
        self.init_error = init_error
        self.init_calls = 0
        self.shutdown_calls = 0

    def init(self) -> None:
        self.init_calls += 1
        if self.init_error:
            raise NvmlUnavailable(self.init_error)

    def shutdown(self) -> None:
        self.shutdown_calls += 1

    def device_count(self) -> int:
        return len(self.gpus)

    def handle(self, index: int) -> Any:
        return self.gpus[index]

    def name(self, handle: Any) -> str:
        return str(handle.name)

    def memory(self, handle: Any) -> tuple[int, int]:
        if handle.memory_fails:
            raise NvmlCallError("nvmlDeviceGetMemoryInfo: Unknown Error")
        return handle.used, handle.total

    def utilization_percent(self, handle: Any) -> float:
        return 42.0

    def temperature_c(self, handle: Any) -> float:
        return 55.0

    def power_w(self, handle: Any) -> float:
        if not handle.power_supported:
            raise NvmlCallError("nvmlDeviceGetPowerUsage: Not Supported")
        return 310.5

    def power_limit_w(self, handle: Any) -> float:
        return 700.0

    def processes(self, handle: Any) -> list[tuple[int, int | None]]:
        return list(handle.processes)


@pytest.fixture
def server_group() -> Iterator[subprocess.Popen[bytes]]:
    """A real process in its own session, standing for the vLLM server's group."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    child.stdout.readline()  # running Python now, not a half-started fork
    yield child
    child.kill()
    child.wait()


def test_real_nvml_without_a_gpu_is_a_state_not_an_exception() -> None:
    try:
        Nvml().init()
    except NvmlUnavailable:
        pass
    else:
        pytest.skip("this machine has a working NVIDIA driver")
    assert visible_gpu_indices() == []
    sampler = GpuSampler()
    sample = sampler.sample()
    assert not sample.has_gpu
    assert sample.gpus == []
    assert sample.no_gpu_reason
    assert sample.host_ram_total > 0
    sampler.close()


def test_no_gpu_is_reported_and_init_is_not_retried_every_sample() -> None:
    nvml = FakeNvml([], init_error="NVML Shared Library Not Found")
    sampler = GpuSampler(nvml=nvml)
    samples = [sampler.sample() for _ in range(3)]
    assert all(s.no_gpu_reason == "NVML Shared Library Not Found" for s in samples)
    assert nvml.init_calls == 1
    assert samples[-1].to_json()["gpus"] == []


def test_driver_with_zero_gpus_says_so() -> None:
    sample = GpuSampler(nvml=FakeNvml([])).sample()
    assert sample.no_gpu_reason == "the driver sees no GPU"


def test_every_gpu_is_read_and_server_memory_is_attributed_per_gpu(
    server_group: subprocess.Popen[bytes],
) -> None:
    server_pid, stranger = server_group.pid, 1
    gpus = [
        FakeGpu("NVIDIA H200", 10 * GIB, 140 * GIB, [(stranger, 9 * GIB)]),
        FakeGpu("NVIDIA H200", 71 * GIB, 140 * GIB, [(server_pid, 70 * GIB), (stranger, GIB)]),
    ]
    sampler = GpuSampler(nvml=FakeNvml(gpus), pgid=server_group.pid)
    sample = sampler.sample()
    assert sample.has_gpu
    assert [g.index for g in sample.gpus] == [0, 1]
    assert sample.gpus[1].memory_used == 71 * GIB
    assert sample.gpus[1].memory_fraction == pytest.approx(71 / 140)
    assert sample.gpus[0].server_memory == 0
    assert sample.gpus[1].server_memory == 70 * GIB
    assert sample.server_gpu_memory == {server_pid: 70 * GIB}
    assert sample.server_pids == [server_pid]
    assert sample.server_rss is not None and sample.server_rss > 1_000_000
    assert sample.gpus[0].utilization == 42.0
    assert sample.gpus[0].temperature_c == 55.0


def test_unsupported_queries_leave_fields_empty_and_broken_gpus_out() -> None:
    gpus = [
        FakeGpu("A", GIB, 2 * GIB, power_supported=False),
        FakeGpu("B", GIB, 2 * GIB, memory_fails=True),
    ]
    sample = GpuSampler(nvml=FakeNvml(gpus)).sample()
    assert [g.name for g in sample.gpus] == ["A"]
    assert sample.gpus[0].power_w is None
    assert sample.gpus[0].power_limit_w == 700.0


def test_all_gpus_failing_reads_as_no_gpu() -> None:
    sample = GpuSampler(nvml=FakeNvml([FakeGpu("B", 0, 1, memory_fails=True)])).sample()
    assert not sample.has_gpu
    assert "memory" in (sample.no_gpu_reason or "")


def test_without_a_server_group_nothing_is_attributed() -> None:
    gpus = [FakeGpu("A", GIB, 2 * GIB, [(1, GIB)])]
    sample = GpuSampler(nvml=FakeNvml(gpus)).sample()
    assert sample.server_gpu_memory == {}
    assert sample.server_rss is None


def test_gone_server_group_gives_no_members(server_group: subprocess.Popen[bytes]) -> None:
    pid = server_group.pid
    server_group.kill()
    server_group.wait()
    sample = GpuSampler(nvml=FakeNvml([]), pgid=pid).sample()
    assert sample.server_pids == []


def test_memory_held_after_stop() -> None:
    gpus = [
        FakeGpu("A", GIB, 2 * GIB, [(100, GIB), (7, 5)]),
        FakeGpu("B", GIB, 2 * GIB, [(100, 2 * GIB), (101, None)]),
    ]
    nvml = FakeNvml(gpus)
    assert gpu_memory_held_by([100, 101, 102], nvml=nvml) == {100: 3 * GIB}
    assert nvml.shutdown_calls == 1
    assert gpu_memory_held_by([100], nvml=FakeNvml([], init_error="no driver")) == {}


def test_two_gpus_every_figure_and_the_server_summed_over_both(
    server_group: subprocess.Popen[bytes],
) -> None:
    """Tensor parallel 2: the server holds memory on both GPUs; a stranger holds some too."""
    pid = server_group.pid
    gpus = [
        FakeGpu("NVIDIA H200", 72 * GIB, 140 * GIB, [(pid, 70 * GIB), (1, GIB)]),
        FakeGpu("NVIDIA H200", 68 * GIB, 140 * GIB, [(pid, 66 * GIB)]),
    ]
    sample = GpuSampler(nvml=FakeNvml(gpus), pgid=pid).sample()
    assert [(g.index, g.server_memory) for g in sample.gpus] == [(0, 70 * GIB), (1, 66 * GIB)]
    assert all(
        (g.utilization, g.temperature_c, g.power_w) == (42.0, 55.0, 310.5) for g in sample.gpus
    )
    assert sample.server_memory == 136 * GIB
    assert sample.server_gpu_memory == {pid: 136 * GIB}
    assert (sample.memory_used, sample.memory_total) == (140 * GIB, 280 * GIB)
    assert sample.server_memory_note is None
    summary = gpu_summary(sample)
    assert summary["server_memory"] == 136 * GIB and summary["server_memory_note"] is None
    assert [g["server_memory"] for g in summary["gpus"]] == [70 * GIB, 66 * GIB]
    assert summary["gpus"][1]["power_w"] == 310.5
    assert sample.to_json()["server_memory_note"] is None


def test_host_pids_in_a_container_say_why_the_server_figure_is_missing(
    server_group: subprocess.Popen[bytes],
) -> None:
    """NVML lists the server under its host PID, which names nothing in our namespace."""
    gpus = [
        FakeGpu("NVIDIA H200", 72 * GIB, 140 * GIB, [(HOST_PID, 70 * GIB)]),
        FakeGpu("NVIDIA H200", 68 * GIB, 140 * GIB, [(HOST_PID + 1, 66 * GIB)]),
    ]
    sample = GpuSampler(nvml=FakeNvml(gpus), pgid=server_group.pid).sample()
    assert sample.server_memory_note == HOST_PIDS_NOTE
    assert sample.server_memory is None  # not a silent 0
    assert sample.memory_used == 140 * GIB  # the totals still hold
    summary = gpu_summary(sample)
    assert summary["server_memory"] is None
    assert summary["server_memory_note"] == HOST_PIDS_NOTE
    assert summary["memory_used"] == 140 * GIB and summary["memory_total"] == 280 * GIB


def test_no_note_when_the_gpu_users_are_local_or_no_server_is_up(
    server_group: subprocess.Popen[bytes],
) -> None:
    # Another local program on the GPU and a server that has not touched it yet: truly 0.
    local = [FakeGpu("A", GIB, 2 * GIB, [(1, GIB)])]
    sample = GpuSampler(nvml=FakeNvml(local), pgid=server_group.pid).sample()
    assert sample.server_memory_note is None and sample.server_memory == 0
    # Nothing on the GPU at all: also 0, nothing to explain.
    idle = GpuSampler(nvml=FakeNvml([FakeGpu("A", 0, GIB)]), pgid=server_group.pid).sample()
    assert idle.server_memory_note is None and idle.server_memory == 0
    # Host PIDs but no server: nothing is missing.
    foreign = [FakeGpu("A", GIB, 2 * GIB, [(HOST_PID, GIB)])]
    assert GpuSampler(nvml=FakeNvml(foreign)).sample().server_memory_note is None
    # One PID matches: the match is trusted, the unknown PID is someone else's.
    mixed = [FakeGpu("A", 2 * GIB, 4 * GIB, [(server_group.pid, GIB), (HOST_PID, GIB)])]
    sample = GpuSampler(nvml=FakeNvml(mixed), pgid=server_group.pid).sample()
    assert sample.server_memory_note is None and sample.server_memory == GIB


def test_memory_the_driver_cannot_attribute_is_explained(
    server_group: subprocess.Popen[bytes],
) -> None:
    gpus = [FakeGpu("A", GIB, 2 * GIB, [(server_group.pid, None)])]
    sample = GpuSampler(nvml=FakeNvml(gpus), pgid=server_group.pid).sample()
    assert sample.server_memory_note == UNATTRIBUTED_NOTE
    assert sample.server_memory is None


class CountFailsNvml(FakeNvml):
    def device_count(self) -> int:
        raise NvmlCallError("nvmlDeviceGetCount: Unknown Error")


def test_visible_gpu_indices_never_raise() -> None:
    two = FakeNvml([FakeGpu("A", 0, GIB), FakeGpu("B", 0, GIB)])
    assert visible_gpu_indices(two) == [0, 1]
    assert two.shutdown_calls == 1
    assert visible_gpu_indices(FakeNvml([], init_error="Driver Not Loaded")) == []
    failing = CountFailsNvml([FakeGpu("A", 0, GIB)])
    assert visible_gpu_indices(failing) == []
    assert failing.shutdown_calls == 1
