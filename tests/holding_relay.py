"""A TCP relay in front of a real server that can hold a streamed reply open mid-way.

Tests that must act while a reply streams (Esc stops it, the server dies in the
middle) cannot race the tiny model: on a loaded machine it writes its whole reply
into the socket before the busy test process reads the first token, and pausing
the server with SIGSTOP/SIGCONT slices does not help, since the test process
itself may not run again for hundreds of milliseconds. The relay makes the
middle of a reply a fixed place instead: after a chat request passes through, it
forwards the first `budget` bytes of the response (headers and a dozen tokens)
and drops the rest, so the stream stays open with no `[DONE]` for as long as the
server lives. When the server's side closes (killed), the client's side closes
too, as it would without the relay. Everything else passes through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import urlsplit

CHAT_REQUEST = b"POST /v1/chat/completions"


class HoldingRelay:
    def __init__(self, upstream_url: str, budget: int = 4096) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.budget = budget
        self.hold_replies = True
        """Hold each chat reply after `budget` bytes; False forwards them whole."""
        self.held = 0
        """Chat replies held so far."""
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HoldingRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            upstream, to_upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            to_client.close()
            self._tasks.discard(task)
            return
        # Bytes of the current response still to forward; None: all of them.
        left: list[int | None] = [None]

        async def requests() -> None:
            while data := await client.read(65536):
                if CHAT_REQUEST in data and self.hold_replies:
                    # HTTP/1.1 on one connection is request, response, request: every
                    # byte from the server after this request belongs to its reply.
                    left[0] = self.budget
                    self.held += 1
                to_upstream.write(data)
                await to_upstream.drain()

        async def responses() -> None:
            while data := await upstream.read(65536):
                if left[0] is not None:
                    data, left[0] = data[: left[0]], max(0, left[0] - len(data))
                if data:
                    to_client.write(data)
                    await to_client.drain()

        try:
            with contextlib.suppress(ConnectionError):
                # Whichever side closes first ends the relay of both.
                pending = {asyncio.ensure_future(requests()), asyncio.ensure_future(responses())}
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for other in pending:
                    other.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for writer in (to_upstream, to_client):
                writer.close()
            self._tasks.discard(task)
