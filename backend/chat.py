"""Streaming chat against any OpenAI-compatible server (vLLM first of all).

`ChatClient.stream()` yields small typed events parsed from the server-sent
events of `/v1/chat/completions`; `ReplyAccumulator` folds them into one reply
with its per-reply stats. Every failure (no server, HTTP error, an `{"error":
...}` body, a connection dropped mid-reply) becomes one `StreamError` event
with a one-line message: callers never see an httpx traceback.

Closing the event iterator (Esc in the panel) closes the HTTP response, which
makes vLLM abort the request; the server stays healthy.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError
from prometheus_client.parser import text_string_to_metric_families

from backend.supervisor import ServerSupervisor

# A reply can pause for a long time (a big prompt prefilling, a cold engine);
# only connecting and writing must be quick.
STREAM_TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=5.0)
SPEC_COUNTERS = ("drafts", "draft_tokens", "accepted_tokens")


# -- events -----------------------------------------------------------------
@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """One streamed piece of a tool call; pieces with the same index add up."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Finish:
    reason: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class StreamError:
    """The reply failed or was cut off; `message` is the one line to show."""

    message: str


ChatEvent = ContentDelta | ReasoningDelta | ToolCallDelta | Finish | Usage | StreamError


class ChatError(RuntimeError):
    """A request outside the stream (listing models) failed; one-line message."""


# -- request ----------------------------------------------------------------
@dataclass
class ChatOptions:
    """Sampling and template settings for one request; None leaves the server default."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    enable_thinking: bool | None = None
    """Sent as chat_template_kwargs; Qwen3 templates read it."""
    ignore_eos: bool = False
    """vLLM's extra sampling field: generate max_tokens even past the end token, so
    replies have a fixed length when comparing tok/s with MTP on and off."""

    def request_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.temperature is not None:
            fields["temperature"] = self.temperature
        if self.top_p is not None:
            fields["top_p"] = self.top_p
        if self.max_tokens is not None:
            fields["max_tokens"] = self.max_tokens
        if self.enable_thinking is not None:
            fields["chat_template_kwargs"] = {"enable_thinking": self.enable_thinking}
        if self.ignore_eos:
            fields["ignore_eos"] = True
        return fields


def image_data_url(path: Path) -> str:
    """A local image as a data: URL (vLLM cannot read the client's files)."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not mime.startswith("image/"):
        raise ValueError(f"{path} does not look like an image ({mime})")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def user_message(text: str, images: Sequence[Path] = ()) -> dict[str, Any]:
    """A user turn; with images, OpenAI content parts (text first, then image_url)."""
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for image in images:
        parts.append({"type": "image_url", "image_url": {"url": image_data_url(image)}})
    return {"role": "user", "content": parts}


def build_messages(
    history: Sequence[Mapping[str, Any]], system: str | None = None
) -> list[dict[str, Any]]:
    """The system prompt (only if given) followed by the conversation."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.extend(dict(message) for message in history)
    return messages


# -- parsing ----------------------------------------------------------------
def error_message(body: Any, status: int | None = None) -> str:
    """One line from an error body: OpenAI's `{"error": {...}}` or vLLM's older flat form."""
    prefix = f"HTTP {status}: " if status else ""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            text = " ".join(body.split())
            return prefix + (text[:300] if text else "empty response")
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or json.dumps(error)[:300]
            return prefix + " ".join(str(message).split())[:300]
        if error is not None:
            return prefix + " ".join(str(error).split())[:300]
    return prefix + " ".join(json.dumps(body).split())[:300]


def parse_chunk(data: str) -> list[ChatEvent]:
    """Events in one SSE `data:` payload (one chat.completion.chunk, or an error).

    Anything malformed becomes a StreamError rather than an exception: a
    server is allowed to be wrong, the panel is not allowed to crash.
    """
    try:
        chunk = json.loads(data)
    except ValueError:
        return [StreamError(f"malformed stream data: {' '.join(data.split())[:120]!r}")]
    if not isinstance(chunk, dict):
        return [StreamError(f"unexpected stream data: {' '.join(data.split())[:120]!r}")]
    if "error" in chunk or chunk.get("object") == "error":
        return [StreamError(error_message(chunk))]
    events: list[ChatEvent] = []
    choices = chunk.get("choices")
    if isinstance(choices, list):
        for choice in choices[:1]:  # we ask for n=1
            if isinstance(choice, dict):
                events.extend(_choice_events(choice))
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        parsed = _usage(usage)
        if parsed is not None:
            events.append(parsed)
    return events


def _choice_events(choice: dict[str, Any]) -> list[ChatEvent]:
    events: list[ChatEvent] = []
    delta = choice.get("delta")
    if isinstance(delta, dict):
        # vLLM >= 0.10 says `reasoning`; older releases said `reasoning_content`.
        for key in ("reasoning", "reasoning_content"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                events.append(ReasoningDelta(text))
                break
        content = delta.get("content")
        if isinstance(content, str) and content:
            events.append(ContentDelta(content))
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for position, call in enumerate(tool_calls):
                piece = _tool_piece(call, position)
                if piece is not None:
                    events.append(piece)
    reason = choice.get("finish_reason")
    if isinstance(reason, str) and reason:
        events.append(Finish(reason))
    return events


def _tool_piece(call: Any, position: int) -> ToolCallDelta | None:
    if not isinstance(call, dict):
        return None
    index = call.get("index", position)
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    assert isinstance(function, dict)
    name = function.get("name")
    arguments = function.get("arguments")
    call_id = call.get("id")
    return ToolCallDelta(
        index=index if isinstance(index, int) else position,
        id=call_id if isinstance(call_id, str) else None,
        name=name if isinstance(name, str) else None,
        arguments=arguments if isinstance(arguments, str) else "",
    )


def _usage(usage: dict[str, Any]) -> Usage | None:
    try:
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        total = int(usage.get("total_tokens") or prompt + completion)
    except (TypeError, ValueError):
        return None
    return Usage(prompt, completion, total)


# -- spec-decoding counters (a minimal /metrics read, local to chat) --------
def spec_counters(metrics_text: str) -> dict[str, float]:
    """Sum of the `vllm:spec_decode_num_*_total` counters; empty when spec is off."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            for counter in SPEC_COUNTERS:
                if sample.name == f"vllm:spec_decode_num_{counter}_total":
                    totals[counter] = totals.get(counter, 0.0) + sample.value
    return totals


@dataclass
class SpecAcceptance:
    """Speculative decoding during one reply (Δ of the server's counters)."""

    drafts: float
    draft_tokens: float
    accepted_tokens: float

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    @property
    def mean_acceptance_length(self) -> float | None:
        return 1 + self.accepted_tokens / self.drafts if self.drafts else None

    @classmethod
    def between(cls, before: dict[str, float], after: dict[str, float]) -> SpecAcceptance | None:
        if not before or not after:
            return None
        delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in SPEC_COUNTERS}
        if any(value < 0 for value in delta.values()):
            return None  # the server restarted in between
        return cls(delta["drafts"], delta["draft_tokens"], delta["accepted_tokens"])


# -- the reply --------------------------------------------------------------
@dataclass
class ToolCall:
    index: int
    id: str | None = None
    name: str = ""
    arguments: str = ""

    def parsed_arguments(self) -> Any:
        """The arguments as JSON when they parse, else the raw text."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments


@dataclass
class ReplyStats:
    ttft_s: float | None = None
    """Request sent -> first content or reasoning token."""
    decode_s: float | None = None
    """First token -> last token."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    spec: SpecAcceptance | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens (from usage: one chunk may hold several) / decode time."""
        if not self.completion_tokens or not self.decode_s:
            return None
        return self.completion_tokens / self.decode_s

    def summary(self) -> str:
        """The stats line under a reply."""
        parts = []
        if self.ttft_s is not None:
            parts.append(f"TTFT {self.ttft_s * 1000:.0f} ms")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        if self.prompt_tokens is not None:
            parts.append(f"in {self.prompt_tokens} / out {self.completion_tokens}")
        if self.spec is not None and self.spec.acceptance_rate is not None:
            mean = self.spec.mean_acceptance_length or 0.0
            parts.append(f"accept {self.spec.acceptance_rate:.0%} (mean len {mean:.2f})")
        return " · ".join(parts)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ttft_s": self.ttft_s,
            "decode_s": self.decode_s,
            "tokens_per_s": self.tokens_per_s,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "spec": None,
        }
        if self.spec is not None:
            data["spec"] = {
                **asdict(self.spec),
                "acceptance_rate": self.spec.acceptance_rate,
                "mean_acceptance_length": self.spec.mean_acceptance_length,
            }
        return data


@dataclass
class ReplyAccumulator:
    """Folds the event stream into one reply, timing tokens as they arrive."""

    clock: Callable[[], float] = time.monotonic
    """Where times come from (a fixed clock makes snapshots deterministic)."""
    started: float = field(default_factory=time.monotonic)
    text_parts: list[str] = field(default_factory=list)
    reasoning_parts: list[str] = field(default_factory=list)
    """Pieces, joined on demand: `+=` on a growing str is quadratic at 2,000 tok/s."""
    tool_calls: dict[int, ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    spec: SpecAcceptance | None = None
    """Set by ChatClient.stream_reply once the reply is over."""

    @property
    def text(self) -> str:
        if len(self.text_parts) > 1:
            self.text_parts[:] = ["".join(self.text_parts)]
        return self.text_parts[0] if self.text_parts else ""

    @property
    def reasoning(self) -> str:
        if len(self.reasoning_parts) > 1:
            self.reasoning_parts[:] = ["".join(self.reasoning_parts)]
        return self.reasoning_parts[0] if self.reasoning_parts else ""

    def add(self, event: ChatEvent, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if isinstance(event, (ContentDelta, ReasoningDelta, ToolCallDelta)):
            if self.first_token_at is None:
                self.first_token_at = now
            self.last_token_at = now
        if isinstance(event, ContentDelta):
            self.text_parts.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self.reasoning_parts.append(event.text)
        elif isinstance(event, ToolCallDelta):
            call = self.tool_calls.setdefault(event.index, ToolCall(event.index))
            call.id = event.id or call.id
            call.name += event.name or ""
            call.arguments += event.arguments
        elif isinstance(event, Finish):
            self.finish_reason = event.reason
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, StreamError):
            self.error = event.message

    @property
    def stats(self) -> ReplyStats:
        stats = ReplyStats(spec=self.spec)
        if self.first_token_at is not None:
            stats.ttft_s = self.first_token_at - self.started
            assert self.last_token_at is not None
            stats.decode_s = self.last_token_at - self.first_token_at
        if self.usage is not None:
            stats.prompt_tokens = self.usage.prompt_tokens
            stats.completion_tokens = self.usage.completion_tokens
        return stats


# -- the client -------------------------------------------------------------
def root_url(base_url: str) -> str:
    """The server root: users paste either `http://h:p` or `http://h:p/v1`."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def default_server() -> tuple[str, str | None] | None:
    """(url, api key env name) of the server qtui started on this machine, if any."""
    record = ServerSupervisor(None).load_record()
    if record is None:
        return None
    return record.url, record.profile.get("api_key_env")


class ChatClient:
    """One OpenAI-compatible server. Use as an async context manager."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key_env: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        measure_spec: bool = True,
    ) -> None:
        self.url = root_url(base_url)
        self.model = model
        self.measure_spec = measure_spec
        headers = {}
        # The key comes only from the environment, by name; it is never logged.
        key = os.environ.get(api_key_env) if api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.AsyncClient(timeout=STREAM_TIMEOUT, headers=headers, transport=transport)

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _unreachable(self, error: httpx.HTTPError) -> str:
        detail = str(error) or type(error).__name__
        return f"cannot reach {self.url}: {' '.join(detail.split())[:200]}"

    async def resolve_model(self) -> str:
        """The model named at construction, else the first one `/v1/models` lists."""
        if self.model:
            return self.model
        try:
            response = await self._http.get(f"{self.url}/v1/models")
        except httpx.HTTPError as error:
            raise ChatError(self._unreachable(error)) from None
        if response.status_code != 200:
            raise ChatError(error_message(response.content, response.status_code))
        try:
            models = response.json().get("data") or []
            self.model = str(models[0]["id"])
        except (ValueError, AttributeError, LookupError, TypeError):
            raise ChatError(f"{self.url}/v1/models lists no model") from None
        return self.model

    async def spec_snapshot(self) -> dict[str, float]:
        """Spec-decoding counters now; empty when unavailable (not vLLM, spec off)."""
        if not self.measure_spec:
            return {}
        try:
            response = await self._http.get(f"{self.url}/metrics", timeout=2.0)
            if response.status_code != 200:
                return {}
            return spec_counters(response.text)
        except (httpx.HTTPError, ValueError):
            return {}

    def request_body(
        self, model: str, messages: Sequence[Mapping[str, Any]], options: ChatOptions
    ) -> dict[str, Any]:
        return {
            "model": model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            **options.request_fields(),
        }

    async def stream(
        self, messages: Sequence[Mapping[str, Any]], options: ChatOptions | None = None
    ) -> AsyncIterator[ChatEvent]:
        """Events of one streamed reply; the last one is a StreamError if it failed.

        A reply that ends without `[DONE]` (the server died, the proxy cut it)
        is reported as a StreamError, so callers can mark it interrupted.
        """
        options = options or ChatOptions()
        try:
            model = await self.resolve_model()
        except ChatError as error:
            yield StreamError(str(error))
            return
        body = self.request_body(model, messages, options)
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        done = False
        try:
            async with self._http.stream(
                "POST", f"{self.url}/v1/chat/completions", json=body, headers=headers
            ) as response:
                if response.status_code != 200:
                    content = await response.aread()
                    yield StreamError(error_message(content, response.status_code))
                    return
                content_type = response.headers.get("content-type", "")
                if "text/event-stream" not in content_type:
                    # Some servers answer a stream request with one JSON error body.
                    content = await response.aread()
                    yield StreamError(error_message(content))
                    return
                async for sse in EventSource(response).aiter_sse():
                    if sse.data.strip() == "[DONE]":
                        done = True
                        break
                    if not sse.data.strip():
                        continue
                    for event in parse_chunk(sse.data):
                        yield event
                        if isinstance(event, StreamError):
                            return
        except httpx.TimeoutException:
            yield StreamError(f"{self.url} stopped answering (timed out)")
            return
        except (httpx.RemoteProtocolError, httpx.ReadError):
            yield StreamError(f"the server at {self.url} closed the connection mid-reply")
            return
        except httpx.HTTPError as error:
            yield StreamError(self._unreachable(error))
            return
        except SSEError as error:
            yield StreamError(f"bad event stream: {error}")
            return
        if not done:
            yield StreamError(f"the reply from {self.url} ended before it finished")

    async def stream_reply(
        self,
        messages: Sequence[Mapping[str, Any]],
        options: ChatOptions | None = None,
        reply: ReplyAccumulator | None = None,
    ) -> AsyncIterator[ChatEvent]:
        """`stream()`, folding events into `reply` and measuring spec acceptance around it."""
        reply = reply if reply is not None else ReplyAccumulator()
        before = await self.spec_snapshot()
        reply.started = reply.clock()
        async for event in self.stream(messages, options):
            reply.add(event)
            yield event
        if before:
            reply.spec = SpecAcceptance.between(before, await self.spec_snapshot())
