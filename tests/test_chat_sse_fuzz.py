"""Fuzzed SSE streams and error bodies: the client turns anything into events, never a crash.

The bytes go through httpx's MockTransport (the fuzzed input is the server's
side of the wire); the SSE decoding and chunk parsing under test are real.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backend.chat import (
    ChatClient,
    ContentDelta,
    ReplyAccumulator,
    StreamError,
    error_message,
    parse_chunk,
    user_message,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
# Chunk-shaped JSON with wrong types in every slot the parser reads.
delta_values = st.fixed_dictionaries(
    {},
    optional={
        "content": json_values,
        "reasoning": json_values,
        "reasoning_content": json_values,
        "tool_calls": json_values | st.lists(json_values, max_size=3),
        "role": json_values,
    },
)
chunk_values = st.fixed_dictionaries(
    {},
    optional={
        "choices": json_values
        | st.lists(
            st.fixed_dictionaries(
                {}, optional={"delta": delta_values | json_values, "finish_reason": json_values}
            ),
            max_size=2,
        ),
        "usage": json_values,
        "error": json_values,
    },
)


def _run(body: bytes, status: int = 200, content_type: str = "text/event-stream") -> list[Any]:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(status, headers={"content-type": content_type}, content=body)
    )

    async def collect() -> list[Any]:
        async with ChatClient("http://fuzz.invalid", model="m", transport=transport) as client:
            return [event async for event in client.stream([user_message("x")])]

    return asyncio.run(collect())


@FUZZ
@given(st.text())
def test_parse_chunk_never_raises_on_any_text(data: str) -> None:
    events = parse_chunk(data)
    assert all(not isinstance(event, StreamError) or "\n" not in event.message for event in events)


@FUZZ
@given(chunk_values)
def test_parse_chunk_survives_wrongly_typed_chunks(chunk: dict[str, Any]) -> None:
    reply = ReplyAccumulator()
    for event in parse_chunk(json.dumps(chunk)):
        reply.add(event)
    assert isinstance(reply.text, str) and isinstance(reply.reasoning, str)
    if "error" in chunk:
        assert reply.error is not None


sse_lines = st.one_of(
    st.text(min_size=1, max_size=8).map(
        lambda text: f"data: {json.dumps({'choices': [{'delta': {'content': text}}]})}"
    ),
    st.just(": keep-alive comment"),
    st.just("event: ping"),
    st.just("id: 7"),
    st.just("retry: 1000"),
    st.just("data:"),
    st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=30),
)


@FUZZ
@given(st.lists(sse_lines, max_size=30), st.sampled_from(["\n", "\r\n"]))
def test_any_line_soup_ends_cleanly(lines: list[str], newline: str) -> None:
    body = (newline.join(lines) + newline * 2).encode()
    assume(b"[DONE]" not in body)
    events = _run(body)
    # Never a crash; the stream never reached [DONE], so it ends with exactly one error.
    assert isinstance(events[-1], StreamError)
    assert sum(isinstance(event, StreamError) for event in events) == 1


@FUZZ
@given(
    st.lists(st.text(min_size=1, max_size=8), max_size=20),
    st.lists(st.sampled_from([": comment", "event: x", "id: 1", "retry: 5", ""]), max_size=20),
)
def test_valid_content_survives_interleaved_noise(pieces: list[str], noise: list[str]) -> None:
    lines: list[str] = []
    for index, piece in enumerate(pieces):
        if index < len(noise) and noise[index]:
            lines += [noise[index], ""]
        lines += [f"data: {json.dumps({'choices': [{'delta': {'content': piece}}]})}", ""]
    lines += ["data: [DONE]", ""]
    events = _run(("\n".join(lines) + "\n").encode())
    assert events == [ContentDelta(piece) for piece in pieces]


@FUZZ
@given(
    st.integers(400, 599),
    st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_http_errors_are_one_line(status: int, body: bytes) -> None:
    events = _run(body, status=status, content_type="application/json")
    assert len(events) == 1 and isinstance(events[0], StreamError)
    assert events[0].message.startswith(f"HTTP {status}: ")
    assert "\n" not in events[0].message and len(events[0].message) < 400


@FUZZ
@given(json_values)
def test_error_message_of_any_body_is_one_line(body: Any) -> None:
    message = error_message({"error": body})
    assert "\n" not in message and len(message) <= 310
