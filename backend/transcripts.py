"""Chat transcripts, saved while the reply streams.

One JSONL file per conversation under `data_dir()/conversations/`. Each line
is one record, appended and flushed: `meta`, `system`, `user`, then for each
reply a `reply` line, `delta` lines (batched: at most every `FLUSH_INTERVAL_S`
or `FLUSH_CHARS`, so a 2,000 tok/s stream is not one write per token) and an
`end` line carrying the status (`complete`, `cancelled`, `interrupted`), the
error message, usage and stats. A reply whose `end` never came (the panel
itself died) reads back as interrupted, with every flushed delta kept.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from backend import paths
from backend.chat import ReplyAccumulator, image_data_url

FLUSH_INTERVAL_S = 0.1
FLUSH_CHARS = 4096
TITLE_CHARS = 60


def conversations_dir() -> Path:
    path = paths.data_dir() / "conversations"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Message:
    role: str
    """user | assistant"""
    content: str = ""
    reasoning: str = ""
    images: list[str] = field(default_factory=list)
    """Local image paths attached to a user message."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    status: str = "complete"
    """assistant only: streaming | complete | cancelled | interrupted"""
    error: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    model: str | None = None

    def api_message(self) -> dict[str, Any] | None:
        """This turn as the model should see it again; None for an empty failed reply."""
        if self.role == "user":
            present = [Path(image) for image in self.images if Path(image).is_file()]
            if not present:
                return {"role": "user", "content": self.content}
            parts: list[dict[str, Any]] = [{"type": "text", "text": self.content}]
            parts += [
                {"type": "image_url", "image_url": {"url": image_data_url(image)}}
                for image in present
            ]
            return {"role": "user", "content": parts}
        if not self.content:
            return None
        return {"role": "assistant", "content": self.content}


@dataclass
class ConversationSummary:
    id: str
    path: Path
    title: str
    updated: float
    messages: int


class Conversation:
    """A conversation and its file; the file appears with the first message."""

    def __init__(self, conversation_id: str, path: Path) -> None:
        self.id = conversation_id
        self.path = path
        self.system: str | None = None
        self.messages: list[Message] = []
        self.created = time.time()
        self._handle: IO[str] | None = None

    # -- creating and reopening ---------------------------------------------
    @classmethod
    def new(cls, system: str | None = None) -> Conversation:
        conversation_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        conversation = cls(conversation_id, conversations_dir() / f"{conversation_id}.jsonl")
        conversation.system = system or None
        return conversation

    @classmethod
    def open(cls, conversation_id: str) -> Conversation:
        path = conversations_dir() / f"{conversation_id}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"no conversation {conversation_id!r} in {path.parent}")
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> Conversation:
        conversation = cls(path.stem, path)
        reply: Message | None = None
        for record in _records(path):
            kind = record.get("t")
            if kind == "meta":
                conversation.created = float(record.get("created") or conversation.created)
            elif kind == "system":
                conversation.system = record.get("content") or None
            elif kind == "user":
                conversation.messages.append(
                    Message("user", str(record.get("content", "")), images=record.get("images", []))
                )
            elif kind == "reply":
                reply = Message("assistant", status="streaming", model=record.get("model"))
                conversation.messages.append(reply)
            elif kind == "delta" and reply is not None:
                reply.content += record.get("content", "")
                reply.reasoning += record.get("reasoning", "")
            elif kind == "end" and reply is not None:
                reply.status = record.get("status", "complete")
                reply.error = record.get("error")
                reply.finish_reason = record.get("finish_reason")
                reply.usage = record.get("usage")
                reply.stats = record.get("stats")
                reply.tool_calls = record.get("tool_calls") or []
                reply = None
        if reply is not None:
            reply.status = "interrupted"
            reply.error = "the panel stopped before this reply finished"
        return conversation

    # -- reading ------------------------------------------------------------
    @property
    def title(self) -> str:
        for message in self.messages:
            if message.role == "user" and message.content.strip():
                return _title(message.content)
        return "(empty)"

    def api_messages(self) -> list[dict[str, Any]]:
        """What to send for the next reply: system prompt (if any) and every usable turn."""
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        for message in self.messages:
            api = message.api_message()
            if api is not None:
                messages.append(api)
        return messages

    # -- writing ------------------------------------------------------------
    def _append(self, record: dict[str, Any], *, sync: bool = False) -> None:
        if self._handle is None:
            is_new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
            if is_new:
                meta = {"t": "meta", "id": self.id, "created": self.created, "version": 1}
                self._handle.write(json.dumps(meta) + "\n")
                if self.system:
                    self._handle.write(json.dumps({"t": "system", "content": self.system}) + "\n")
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        # flush() hands the line to the OS: it survives a crash of this process.
        # fsync (disk) only at turn boundaries, so streaming never waits on the disk.
        self._handle.flush()
        if sync:
            os.fsync(self._handle.fileno())

    def set_system(self, system: str | None) -> None:
        system = system or None
        if system == self.system:
            return
        self.system = system
        if self.path.exists() or self._handle is not None:
            self._append({"t": "system", "content": system or ""}, sync=True)

    def add_user(self, text: str, images: list[str] | None = None) -> Message:
        message = Message("user", text, images=list(images or []))
        self.messages.append(message)
        record: dict[str, Any] = {"t": "user", "content": text, "ts": time.time()}
        if message.images:
            record["images"] = message.images
        self._append(record, sync=True)
        return message

    def start_reply(self, model: str | None = None) -> ReplyWriter:
        message = Message("assistant", status="streaming", model=model)
        self.messages.append(message)
        self._append({"t": "reply", "ts": time.time(), "model": model})
        return ReplyWriter(self, message)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class ReplyWriter:
    """Streams one assistant reply into the transcript in batches.

    `message` holds what has been flushed so far (all of it after `finish`).
    """

    def __init__(
        self,
        conversation: Conversation,
        message: Message,
        *,
        interval_s: float = FLUSH_INTERVAL_S,
        max_chars: int = FLUSH_CHARS,
    ) -> None:
        self.conversation = conversation
        self.message = message
        self.interval_s = interval_s
        self.max_chars = max_chars
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._pending_chars = 0
        self._last_flush = time.monotonic()
        self.flushes = 0

    def add_content(self, text: str) -> None:
        self._content.append(text)
        self._queued(len(text))

    def add_reasoning(self, text: str) -> None:
        self._reasoning.append(text)
        self._queued(len(text))

    def _queued(self, chars: int) -> None:
        self._pending_chars += chars
        if (
            self._pending_chars >= self.max_chars
            or time.monotonic() - self._last_flush >= self.interval_s
        ):
            self.flush()

    def flush(self) -> None:
        if not self._pending_chars:
            return
        record: dict[str, Any] = {"t": "delta"}
        # The message grows once per batch, not per token (str += is quadratic).
        if self._content:
            record["content"] = "".join(self._content)
            self.message.content += record["content"]
        if self._reasoning:
            record["reasoning"] = "".join(self._reasoning)
            self.message.reasoning += record["reasoning"]
        self._content.clear()
        self._reasoning.clear()
        self._pending_chars = 0
        self._last_flush = time.monotonic()
        self.conversation._append(record)
        self.flushes += 1

    def finish(
        self,
        status: str = "complete",
        *,
        error: str | None = None,
        finish_reason: str | None = None,
        usage: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> Message:
        """Write what is pending and the end record; `status` says how the reply ended."""
        self.flush()
        message = self.message
        message.status = status
        message.error = error
        message.finish_reason = finish_reason
        message.usage = usage
        message.stats = stats
        message.tool_calls = tool_calls or []
        record: dict[str, Any] = {"t": "end", "status": status, "ts": time.time()}
        for key, value in (
            ("error", error),
            ("finish_reason", finish_reason),
            ("usage", usage),
            ("stats", stats),
            ("tool_calls", tool_calls),
        ):
            if value:
                record[key] = value
        self.conversation._append(record, sync=True)
        return message

    def finish_reply(self, reply: ReplyAccumulator, *, cancelled: bool = False) -> Message:
        """End the transcript's reply from what the stream gave: complete, cancelled
        (the user stopped it) or interrupted (the stream failed; its error kept)."""
        status = "cancelled" if cancelled else "interrupted" if reply.error else "complete"
        return self.finish(
            status,
            error=reply.error,
            finish_reason=reply.finish_reason,
            usage=vars(reply.usage) if reply.usage else None,
            stats=reply.stats.to_json(),
            tool_calls=[vars(call) for call in reply.tool_calls.values()],
        )


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a transcript; a torn last line (crash mid-write) is skipped."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def _title(text: str) -> str:
    first = " ".join(text.split())
    return first if len(first) <= TITLE_CHARS else first[: TITLE_CHARS - 1] + "…"


def list_conversations() -> list[ConversationSummary]:
    """Past conversations, newest first."""
    summaries = []
    for path in conversations_dir().glob("*.jsonl"):
        title, count = "(empty)", 0
        for record in _records(path):
            if record.get("t") == "user":
                if count == 0 and str(record.get("content", "")).strip():
                    title = _title(str(record["content"]))
                count += 1
            elif record.get("t") == "reply":
                count += 1
        try:
            updated = path.stat().st_mtime
        except OSError:
            continue
        summaries.append(ConversationSummary(path.stem, path, title, updated, count))
    summaries.sort(key=lambda summary: summary.updated, reverse=True)
    return summaries
