"""`qtui chat` headless: the real tiny server; the fixed SSE source for the request shape."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from backend.transcripts import Conversation, list_conversations
from tests.chat_sse_source import SSESource, scripted_reply
from tests.conftest import REPO, RunningServer, free_port
from tui.cli import main

QTUI = "import sys; from tui.cli import main; sys.exit(main())"


def _qtui(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", QTUI, *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_reply_alone_on_stdout_stats_on_stderr(vllm_server: RunningServer) -> None:
    result = _qtui("chat", "Say hello.", "--url", vllm_server.url, "--temperature", "0",
                   "--max-tokens", "24")  # fmt: skip
    whole = httpx.post(
        f"{vllm_server.url}/v1/chat/completions",
        json={"model": "tiny", "temperature": 0, "max_tokens": 24,
              "messages": [{"role": "user", "content": "Say hello."}]},
        timeout=60,
    ).json()  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == whole["choices"][0]["message"]["content"] + "\n"
    assert "tok/s" in result.stderr and "in " in result.stderr and "Traceback" not in result.stderr


def test_json_output(vllm_server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "chat",
            "Hi",
            "--url",
            vllm_server.url + "/v1",
            "--max-tokens",
            "5",
            "--ignore-eos",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["usage"]["completion_tokens"] == 5 and out["finish_reason"] == "length"
    assert set(out) >= {"text", "reasoning", "usage", "stats"}
    assert out["stats"]["tokens_per_s"] > 0
    # Saved like a panel conversation: the history (ctrl+o) lists it.
    saved = Conversation.open(out["conversation"])
    assert [(m.role, m.status) for m in saved.messages] == [
        ("user", "complete"), ("assistant", "complete"),
    ]  # fmt: skip
    assert saved.messages[0].content == "Hi" and saved.messages[1].content == out["text"]
    assert saved.messages[1].usage == out["usage"]


def test_no_save_keeps_no_transcript(
    vllm_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["chat", "Hi", "--url", vllm_server.url, "--max-tokens", "2", "--no-save", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["conversation"] is None
    assert list_conversations() == []


def test_default_url_is_the_server_qtui_runs(
    vllm_server: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QTUI_STATE_DIR", str(vllm_server.state_dir))
    assert main(["chat", "Hi", "--max-tokens", "3", "--ignore-eos", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["chat", "hi"], 1, "qtui: no server: start one with `qtui serve start`, or pass --url"),
        (["chat", "hi", "--url", "localhost:8000"], 2, "qtui: bad --url 'localhost:8000'"),
        (["chat", "hi", "--url", "http://127.0.0.1:{port}"], 1, "qtui: cannot reach http://127"),
    ],
)
def test_failures_are_one_line_and_non_zero(args: list[str], code: int, message: str) -> None:
    args = [arg.format(port=free_port()) for arg in args]
    result = _qtui(*args)
    assert result.returncode == code
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert result.stdout == ""


async def test_no_system_prompt_unless_given(capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    async with SSESource(scripted_reply("ok")) as source:
        for extra in ([], ["--system", "Be terse."]):
            await asyncio.to_thread(main, ["chat", "Hi", "--url", source.url, *extra])
    plain, with_system = (request["messages"] for request in source.requests)
    assert plain == [{"role": "user", "content": "Hi"}]
    assert with_system[0] == {"role": "system", "content": "Be terse."}
    assert capsys.readouterr().out == "ok\nok\n"
    assert source.requests[0]["stream_options"] == {"include_usage": True}
