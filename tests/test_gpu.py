"""GpuSampler: a stand-in at the NVML boundary (this machine has no NVIDIA GPU), real psutil.

The real sampler runs on the GPU machine as `python -m backend.gpu` (see the report of issue 3).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from backend.gpu import (
    GpuSample,
    GpuSampler,
    Nvml,
    NvmlCallError,
    NvmlUnavailable,
    gpu_memory_held_by,
)

GIB = 1 << 30


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


def test_own_thread_delivers_samples_until_stopped() -> None:
    got: list[GpuSample] = []
    three = threading.Event()

    def on_sample(sample: GpuSample) -> None:
        got.append(sample)
        if len(got) >= 3:
            three.set()

    sampler = GpuSampler(interval_s=0.02, nvml=FakeNvml([FakeGpu("A", GIB, 2 * GIB)]))
    sampler.start(on_sample)
    assert three.wait(5)
    sampler.close()
    count = len(got)
    assert not any(t.name == "gpu-sampler" for t in threading.enumerate())
    assert len(got) == count
    assert got[-1].gpus[0].name == "A"
