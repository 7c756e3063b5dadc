"""Watching a vLLM server qtui did not start (`qtui --url`, `[endpoints]`, `w`).

The server here is started by the test itself with `subprocess` (the argv and
environment qtui would use, but no supervisor, no state file), so qtui knows
it only by its URL, as it would know another user's server or a container's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from textual.pilot import Pilot

from backend.config import EndpointSettings, Settings, cpu_profile
from backend.endpoint import NOT_OURS, EndpointWatcher, endpoint_from_url
from backend.engine import Engine
from backend.serve_args import plan_launch
from backend.server_state import Phase
from backend.supervisor import ServerSupervisor
from tests.conftest import free_port
from tui.app import QtuiApp, make_app
from tui.widgets.chat import ChatPane
from tui.widgets.status_bar import ServerStatusBar

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def foreign_server(
    engine: Engine, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """vllm serve started here, in its own session, logging to a file qtui is not told of."""
    port = free_port()
    plan = plan_launch(cpu_profile(str(tiny_model), port=port), engine)
    log = tmp_path_factory.mktemp("foreign") / "vllm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            plan.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **plan.env},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the test's own vLLM did not become ready"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url, proc
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_url_forms_are_normalised() -> None:
    assert endpoint_from_url("127.0.0.1:8000/v1/").url == "http://127.0.0.1:8000"
    named = endpoint_from_url("http://gpu-box:9000", api_key_env="THEIR_KEY")
    assert (named.name, named.api_key_env) == ("gpu-box:9000", "THEIR_KEY")


def test_nothing_listening_is_stopped_with_the_reason() -> None:
    status = EndpointWatcher(endpoint_from_url(f"127.0.0.1:{free_port()}")).status()
    assert status.phase is Phase.STOPPED
    assert status.reason is not None and "connection refused" in status.reason


def test_watcher_follows_a_real_server_through_a_freeze(
    foreign_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, proc = foreign_server
    watcher = EndpointWatcher(endpoint_from_url(url))
    assert watcher.status().phase is Phase.READY
    assert watcher.served == "tiny (max_model_len 512)"
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        frozen = watcher.status()
        assert frozen.phase is Phase.NOT_RESPONDING
        assert frozen.reason is not None and "not ours to stop" in frozen.reason
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    assert watcher.status().phase is Phase.READY


async def until(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"condition not reached in {timeout} s")


def panel(
    url: str, state_dir: Path, endpoints: dict[str, EndpointSettings] | None = None
) -> QtuiApp:
    settings = Settings(endpoints=endpoints or {})
    supervisor = ServerSupervisor(None, state_dir=state_dir)
    return make_app(
        settings=settings, supervisor=supervisor, poll_interval_s=0.3,
        endpoint=endpoint_from_url(url) if not endpoints else None,
    )  # fmt: skip


async def test_panel_on_a_foreign_server_shows_it_chats_and_will_not_stop_it(
    foreign_server: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    url, proc = foreign_server
    app = panel(url, tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        bar = app.screen.query_one(ServerStatusBar)
        await until(pilot, lambda: "ready" in str(bar.render()) and "tiny" in str(bar.render()))
        assert NOT_OURS in str(bar.render()) and url.split("://")[1] in str(bar.render())
        await until(pilot, lambda: app.telemetry is not None and app.telemetry[0] is not None)
        snapshot = app.telemetry[0] if app.telemetry else None
        assert snapshot is not None and not snapshot.stale

        await pilot.press("x")
        await pilot.pause()
        assert any(NOT_OURS in note.message for note in app._notifications)
        assert proc.poll() is None and httpx.get(f"{url}/health", timeout=5).status_code == 200

        await pilot.press("c")
        await pilot.pause()
        for key in "hello":
            await pilot.press(key)
        await pilot.press("enter")
        pane = app.screen.query_one(ChatPane)
        await until(pilot, lambda: any(m.role == "assistant" for m in pane.conversation.messages))
        await until(pilot, lambda: not pane.streaming)
        reply = [m for m in pane.conversation.messages if m.role == "assistant"][-1]
        assert reply.content, "the watched server's reply was empty"


async def test_w_switches_between_our_server_and_the_configured_endpoints(
    foreign_server: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    url, _ = foreign_server
    app = panel(url, tmp_path / "state", {"lab": EndpointSettings(url=url)})
    async with app.run_test(size=(80, 24)) as pilot:
        bar = app.screen.query_one(ServerStatusBar)
        await until(pilot, lambda: "stopped" in str(bar.render()))
        await pilot.press("w")
        await until(pilot, lambda: "ready" in str(bar.render()) and "lab" in str(bar.render()))
        await pilot.press("w")
        await until(pilot, lambda: "stopped" in str(bar.render()))
        assert app.endpoint is None and NOT_OURS not in str(bar.render())


def test_version_names_qtui_and_the_engine() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tui", "--version"], capture_output=True, text=True, check=True
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("qtui ") and lines[1].startswith("vLLM 0.")


async def test_bench_screen_benches_a_foreign_server_as_it_runs(
    foreign_server: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    from backend.bench import MODEL_CARD_PROMPTS, BenchPrompt
    from tui.screens.bench import BenchScreen

    url, _ = foreign_server
    short = tuple(BenchPrompt(p.name, p.prompt, 24) for p in MODEL_CARD_PROMPTS)
    app = panel(url, tmp_path / "state")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = BenchScreen(app.supervisor, prompts=short, url=url)
        await app.push_screen(screen)
        await pilot.press("a")
        await until(pilot, lambda: screen.shown is not None and not screen.running, timeout=240)
        assert screen.shown is not None
        assert screen.shown.url == url
        assert len(screen.shown.halves) == 1 and screen.shown.halves[0].overall_tokens_per_s
