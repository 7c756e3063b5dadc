"""Headless telemetry: `qtui top` and the `telemetry` object of `qtui serve status --json`."""

from __future__ import annotations

import json

import pytest

from tests.conftest import RunningServer, free_port
from tui.cli import main

pytestmark = pytest.mark.vllm


def test_top_prints_bounded_json_lines_of_the_running_server(
    vllm_server: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QTUI_STATE_DIR", str(vllm_server.state_dir))
    assert main(["top", "--count", "3", "--interval", "0.3", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    objects = [json.loads(line) for line in lines]
    for obj in objects:
        telemetry = obj["telemetry"]
        assert telemetry["url"] == vllm_server.url
        assert telemetry["stale"] is False
        assert telemetry["generation_tps"] is not None and telemetry["generation_tps"] >= 0
        assert telemetry["warnings"] == []
        assert obj["gpu"]["host_ram_total"] > 0
        # The sampler follows the server's process group.
        assert obj["gpu"]["server_pids"] and obj["gpu"]["server_rss"] > 0
    assert 0.25 < objects[0]["telemetry"]["window_s"] < 2.0


def test_top_text_line_and_a_dead_url_is_stale_not_a_crash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["top", "--url", url, "--count", "1", "--interval", "0.1"]) == 0
    line = capsys.readouterr().out.strip()
    assert "STALE (cannot reach" in line and "gen - tok/s" in line


def test_top_without_a_server_says_how_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--count", "1"]) == 1
    assert "qtui serve start" in capsys.readouterr().err


def test_serve_status_json_has_windowed_telemetry(
    vllm_server: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QTUI_STATE_DIR", str(vllm_server.state_dir))
    assert main(["serve", "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["phase"] == "ready"
    telemetry = data["telemetry"]
    assert telemetry["stale"] is False
    assert 0.9 < telemetry["window_s"] < 3.0
    assert telemetry["cache_dtype"] == "auto" and telemetry["spec_decode"] is False
    assert telemetry["startup"]["kv_cache_gib"] == pytest.approx(0.25)


def test_serve_status_json_without_a_server_has_null_telemetry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["phase"] == "stopped" and data["telemetry"] is None
