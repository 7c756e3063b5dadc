"""A fixed, local OpenAI-style SSE source on 127.0.0.1, for snapshots and the latency bench.

Not a stand-in for vLLM in behaviour tests (those use the real tiny server):
it exists to make a screen deterministic (snapshots) and to push a known
token rate into the pane (bench). It speaks just enough HTTP/1.1:
`GET /v1/models`, `POST /v1/chat/completions` (streams the script, then
`[DONE]`), everything else 404.

Run alone: `python -m tests.chat_sse_source --rate 2000 --tokens 20000` prints its URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

MODELS = {"object": "list", "data": [{"id": "synthetic", "object": "model"}]}
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "streaming",
    "many",
    "tokens",
]


def chunk(delta: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One chat.completion.chunk with a single choice (or none, for usage)."""
    body: dict[str, Any] = {"id": "chatcmpl-fixed", "object": "chat.completion.chunk"}
    body["choices"] = [] if delta is None else [{"index": 0, "delta": delta, **extra}]
    return body


def scripted_reply(
    content: str, reasoning: str = "", tool: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Chunks of a reply: role, reasoning words, content words, finish, usage."""
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"reasoning": piece}) for piece in _pieces(reasoning)]
    chunks += [chunk({"content": piece}) for piece in _pieces(content)]
    if tool is not None:
        call = {"index": 0, "id": "call_1", "type": "function"}
        chunks.append(chunk({"tool_calls": [{**call, "function": {"name": tool["name"]}}]}))
        for piece in _pieces(json.dumps(tool["arguments"])):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    pieces = len(_pieces(reasoning)) + len(_pieces(content))
    chunks.append(chunk({}, finish_reason="tool_calls" if tool else "stop"))
    usage = {"prompt_tokens": 12, "completion_tokens": pieces, "total_tokens": 12 + pieces}
    chunks.append({**chunk(None), "usage": usage})
    return chunks


def _pieces(text: str) -> list[str]:
    """Split after each space, the way a tokenizer streams words."""
    pieces: list[str] = []
    for word in text.split(" "):
        pieces.append(word + " ")
    if pieces:
        pieces[-1] = pieces[-1][:-1]
    return [piece for piece in pieces if piece]


class SSESource:
    """Serves `script` (fixed chunks) or `rate` tokens/s of words for each chat request."""

    def __init__(
        self,
        script: Iterable[dict[str, Any]] | None = None,
        *,
        rate: float | None = None,
        tokens: int = 1000,
    ) -> None:
        self.script = list(script) if script is not None else None
        self.rate = rate
        self.tokens = tokens
        self.requests: list[dict[str, Any]] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> SSESource:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> SSESource:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            if method == "GET" and path == "/v1/models":
                await self._send_json(writer, MODELS)
            elif method == "POST" and path == "/v1/chat/completions":
                self.requests.append(json.loads(body))
                await self._stream(writer)
            else:
                await self._send_json(writer, {"error": {"message": "not found"}}, 404)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away (Esc): that is allowed
        finally:
            writer.close()

    async def _send_json(
        self, writer: asyncio.StreamWriter, body: dict[str, Any], status: int = 200
    ) -> None:
        data = json.dumps(body).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
        )
        if self.script is not None:
            for item in self.script:
                writer.write(f"data: {json.dumps(item)}\n\n".encode())
            await writer.drain()
        else:
            await self._stream_rate(writer)
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()

    async def _stream_rate(self, writer: asyncio.StreamWriter) -> None:
        """`rate` one-token chunks per second, paced against the clock (not per sleep)."""
        assert self.rate is not None
        opening = chunk({"role": "assistant", "content": ""})
        writer.write(f"data: {json.dumps(opening)}\n\n".encode())
        started = time.monotonic()
        sent = 0
        while sent < self.tokens:
            due = min(self.tokens, int((time.monotonic() - started) * self.rate) + 1)
            while sent < due:
                word = WORDS[sent % len(WORDS)]
                # A new paragraph now and then, as real replies have.
                text = word + ("\n\n" if sent % 97 == 96 else " ")
                writer.write(f"data: {json.dumps(chunk({'content': text}))}\n\n".encode())
                sent += 1
            await writer.drain()
            await asyncio.sleep(0.002)
        writer.write(f"data: {json.dumps(chunk({}, finish_reason='length'))}\n\n".encode())
        usage = {"prompt_tokens": 10, "completion_tokens": sent, "total_tokens": 10 + sent}
        writer.write(f"data: {json.dumps({**chunk(None), 'usage': usage})}\n\n".encode())


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    source = await SSESource(rate=args.rate, tokens=args.tokens).start(args.port)
    print(source.url, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
