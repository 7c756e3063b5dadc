"""The chat client against the real tiny vLLM server (and its own error paths)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from backend.chat import (
    ChatClient,
    ChatOptions,
    ContentDelta,
    Finish,
    ReplyAccumulator,
    StreamError,
    Usage,
    spec_counters,
    user_message,
)
from tests.conftest import RunningServer, free_port

PROMPT = [user_message("Write a short story about a lighthouse.")]


def _counter(metrics: str, name: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _settled_counters(url: str, names: tuple[str, ...], expected: dict[str, float]) -> dict:
    """Counters after the engine has recorded the last step (it may lag the HTTP reply)."""
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + 10
        while True:
            text = (await http.get(f"{url}/metrics")).text
            values = {name: _counter(text, name) for name in names}
            if values == expected or time.monotonic() > deadline:
                return values
            await asyncio.sleep(0.1)


async def test_streamed_text_equals_non_streamed_at_temperature_0(
    vllm_server: RunningServer,
) -> None:
    options = ChatOptions(temperature=0.0, max_tokens=48)
    async with ChatClient(vllm_server.url) as client:
        reply = ReplyAccumulator()
        events = [event async for event in client.stream_reply(PROMPT, options, reply)]
        assert client.model == "tiny"  # asked /v1/models for the first id
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(
            f"{vllm_server.url}/v1/chat/completions",
            json={"model": "tiny", "messages": PROMPT, "temperature": 0.0, "max_tokens": 48},
        )
    whole = response.json()
    assert reply.error is None
    assert len([e for e in events if isinstance(e, ContentDelta)]) > 1, "it did stream"
    assert reply.text == whole["choices"][0]["message"]["content"]
    assert reply.finish_reason == whole["choices"][0]["finish_reason"]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == whole["usage"]["prompt_tokens"]
    assert reply.usage.completion_tokens == whole["usage"]["completion_tokens"]
    stats = reply.stats
    assert stats.ttft_s is not None and stats.ttft_s > 0
    assert stats.tokens_per_s is not None and stats.tokens_per_s > 0
    assert stats.spec is None  # spec decoding is off on this server


async def test_usage_matches_what_the_server_counters_moved(vllm_server: RunningServer) -> None:
    names = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{vllm_server.url}/metrics")).text
    before = {name: _counter(text, name) for name in names}
    reply = ReplyAccumulator()
    async with ChatClient(vllm_server.url, model="tiny") as client:
        async for _ in client.stream_reply(
            PROMPT, ChatOptions(max_tokens=37, ignore_eos=True), reply
        ):
            pass
    assert reply.usage is not None and reply.usage.completion_tokens == 37
    expected = {
        "vllm:prompt_tokens_total": before["vllm:prompt_tokens_total"] + reply.usage.prompt_tokens,
        "vllm:generation_tokens_total": before["vllm:generation_tokens_total"] + 37,
    }
    assert await _settled_counters(vllm_server.url, names, expected) == expected


async def test_cancel_mid_stream_leaves_the_server_healthy(vllm_server: RunningServer) -> None:
    async with ChatClient(vllm_server.url, model="tiny") as client:
        stream = client.stream(
            PROMPT, ChatOptions(max_tokens=400, temperature=0.8, ignore_eos=True)
        )
        seen = 0
        async for event in stream:
            seen += isinstance(event, ContentDelta)
            if seen == 3:
                break
        await stream.aclose()  # what Esc does: the response is closed
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{vllm_server.url}/health")).status_code == 200
            # vLLM noticed the disconnect and aborted the request.
            running = await _settled_counters(
                vllm_server.url, ("vllm:num_requests_running",), {"vllm:num_requests_running": 0}
            )
            assert running == {"vllm:num_requests_running": 0}
        reply = ReplyAccumulator()
        async for _ in client.stream_reply(
            PROMPT, ChatOptions(max_tokens=8, ignore_eos=True), reply
        ):
            pass
        assert reply.error is None and reply.finish_reason == "length"


async def test_spec_acceptance_is_measured_around_the_reply(
    vllm_ngram_server: RunningServer,
) -> None:
    # A repetitive prompt gives the ngram drafter something to match.
    prompt = [user_message("one two three four one two three four one two three four one two")]
    reply = ReplyAccumulator()
    async with ChatClient(vllm_ngram_server.url, model="tiny") as client:
        async for _ in client.stream_reply(
            prompt, ChatOptions(max_tokens=64, temperature=0), reply
        ):
            pass
    spec = reply.stats.spec
    assert spec is not None, "the ngram server exposes spec counters"
    assert spec.drafts >= 0 and spec.draft_tokens >= spec.accepted_tokens >= 0
    # Whatever drafting happened is consistent with the server's own counters.
    async with httpx.AsyncClient() as http:
        totals = spec_counters((await http.get(f"{vllm_ngram_server.url}/metrics")).text)
    assert totals["draft_tokens"] >= spec.draft_tokens
    if spec.draft_tokens:
        assert reply.stats.summary().count("accept") == 1


async def test_thinking_switch_reaches_the_chat_template(vllm_server: RunningServer) -> None:
    # The tiny template pre-fills an empty think block when thinking is off: more prompt tokens.
    usage = {}
    async with ChatClient(vllm_server.url, model="tiny") as client:
        for thinking in (True, False):
            reply = ReplyAccumulator()
            options = ChatOptions(max_tokens=1, enable_thinking=thinking)
            async for _ in client.stream_reply(PROMPT, options, reply):
                pass
            assert reply.usage is not None
            usage[thinking] = reply.usage.prompt_tokens
    assert usage[False] > usage[True]


@pytest.mark.parametrize(
    ("options", "model", "expected"),
    [
        (ChatOptions(max_tokens=100_000), "tiny", "HTTP 400: max_tokens=100000 cannot be greater"),
        (ChatOptions(), "no-such-model", "HTTP 404: The model `no-such-model` does not exist"),
    ],
)
async def test_server_errors_become_one_line(
    vllm_server: RunningServer, options: ChatOptions, model: str, expected: str
) -> None:
    async with ChatClient(vllm_server.url, model=model) as client:
        events = [event async for event in client.stream(PROMPT, options)]
    assert len(events) == 1 and isinstance(events[0], StreamError)
    assert events[0].message.startswith(expected)
    assert "\n" not in events[0].message


async def test_no_server_is_one_clear_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with ChatClient(url) as client:
        events = [event async for event in client.stream(PROMPT)]
    assert events == [StreamError(events[0].message)]
    assert events[0].message.startswith(f"cannot reach {url}")


async def test_api_key_is_sent_from_the_named_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        return httpx.Response(401, json={"error": {"message": "Unauthorized"}})

    monkeypatch.setenv("MY_TEST_KEY", "sk-secret-123")
    transport = httpx.MockTransport(handler)
    async with ChatClient(
        "http://example.invalid/v1", model="m", api_key_env="MY_TEST_KEY", transport=transport
    ) as client:
        events = [event async for event in client.stream(PROMPT)]
    assert seen == ["Bearer sk-secret-123"]
    assert events == [StreamError("HTTP 401: Unauthorized")]
    assert "sk-secret" not in events[0].message


def _sse(*items: Any) -> bytes:
    return b"".join(
        f"data: {item if isinstance(item, str) else json.dumps(item)}\n\n".encode()
        for item in items
    )


async def _events_for(body: bytes, content_type: str = "text/event-stream") -> list[Any]:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-type": content_type}, content=body)
    )
    async with ChatClient("http://fixed.invalid", model="m", transport=transport) as client:
        return [event async for event in client.stream(PROMPT)]


async def test_tool_call_pieces_add_up() -> None:
    def piece(index: int, **function: str) -> dict[str, Any]:
        call: dict[str, Any] = {"index": index, "function": function}
        if "name" in function and function["name"] != "weather":
            call["id"] = f"c{index + 1}"
        return {"choices": [{"delta": {"tool_calls": [call]}}]}

    pieces = [
        piece(0, name="get_"),
        piece(0, name="weather", arguments='{"ci'),
        piece(0, arguments='ty": "Oslo"}'),
        piece(1, name="now", arguments="{}"),
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    ]
    reply = ReplyAccumulator()
    for event in await _events_for(_sse(*pieces, "[DONE]")):
        reply.add(event)
    assert reply.error is None and reply.finish_reason == "tool_calls"
    first, second = reply.tool_calls[0], reply.tool_calls[1]
    assert (first.id, first.name, first.parsed_arguments()) == (
        "c1",
        "get_weather",
        {"city": "Oslo"},
    )
    assert (second.id, second.name, second.parsed_arguments()) == ("c2", "now", {})


async def test_reasoning_and_legacy_reasoning_content_both_count() -> None:
    body = _sse(
        {"choices": [{"delta": {"reasoning": "think "}}]},
        {"choices": [{"delta": {"reasoning_content": "more"}}]},
        {"choices": [{"delta": {"content": "answer"}}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
        "[DONE]",
    )
    reply = ReplyAccumulator()
    for event in await _events_for(body):
        reply.add(event)
    assert (reply.reasoning, reply.text) == ("think more", "answer")
    assert reply.usage == Usage(3, 4, 7)


async def test_a_stream_cut_before_done_is_an_error() -> None:
    events = await _events_for(_sse({"choices": [{"delta": {"content": "half"}}]}))
    assert events[0] == ContentDelta("half")
    assert isinstance(events[-1], StreamError) and "ended before it finished" in events[-1].message


async def test_a_json_error_instead_of_a_stream() -> None:
    events = await _events_for(b'{"error": {"message": "overloaded"}}', "application/json")
    assert events == [StreamError("overloaded")]


async def test_mid_stream_error_body_ends_the_reply() -> None:
    body = _sse(
        {"choices": [{"delta": {"content": "a"}}]},
        {"error": {"message": "engine dead", "code": 500}},
        {"choices": [{"delta": {"content": "never"}}]},
    )
    events = await _events_for(body)
    assert events == [ContentDelta("a"), StreamError("engine dead")]


def test_finish_event_kinds() -> None:
    from backend.chat import parse_chunk

    assert parse_chunk('{"choices":[{"delta":{},"finish_reason":"stop"}]}') == [Finish("stop")]
    assert parse_chunk("[]")[0] == StreamError("unexpected stream data: '[]'")
