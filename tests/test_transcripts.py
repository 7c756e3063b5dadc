"""Transcripts on disk: written while streaming, reopened as they were left."""

from __future__ import annotations

import json
from pathlib import Path

from backend import paths
from backend.transcripts import Conversation, ReplyWriter, list_conversations


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_conversation_round_trips(tmp_path: Path) -> None:
    conversation = Conversation.new(system="Be brief.")
    assert conversation.path.parent == paths.data_dir() / "conversations"
    assert not conversation.path.exists(), "no file until something is said"
    conversation.add_user("Hello?")
    writer = conversation.start_reply(model="tiny")
    writer.add_reasoning("thinking")
    writer.add_content("Hi ")
    writer.add_content("there.")
    writer.finish("complete", finish_reason="stop", usage={"prompt_tokens": 5})
    conversation.close()

    again = Conversation.open(conversation.id)
    assert again.system == "Be brief."
    user, reply = again.messages
    assert (user.role, user.content) == ("user", "Hello?")
    assert (reply.content, reply.reasoning, reply.status) == ("Hi there.", "thinking", "complete")
    assert reply.usage == {"prompt_tokens": 5} and reply.model == "tiny"
    assert again.api_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Hi there."},
    ]


def test_deltas_are_batched_not_written_per_token() -> None:
    conversation = Conversation.new()
    conversation.add_user("go")
    writer = ReplyWriter(conversation, conversation.start_reply().message, interval_s=3600)
    writer.max_chars = 100
    for _ in range(1000):
        writer.add_content("ab")  # 2,000 chars: 20 batches of 100, not 1,000 writes
    assert writer.flushes == 20
    writer.finish("complete")
    deltas = [line for line in _lines(conversation.path) if line["t"] == "delta"]
    assert len(deltas) == 20
    assert "".join(line["content"] for line in deltas) == "ab" * 1000


def test_pending_text_is_on_disk_before_the_reply_ends() -> None:
    conversation = Conversation.new()
    conversation.add_user("go")
    writer = conversation.start_reply()
    writer.interval_s = 0.0  # flush on every delta
    writer.add_content("partial")
    # Another process (or a crash right now) sees the partial reply already.
    reopened = Conversation.load(conversation.path)
    assert reopened.messages[-1].content == "partial"
    assert reopened.messages[-1].status == "interrupted"  # no end record yet
    assert "panel stopped" in (reopened.messages[-1].error or "")


def test_interrupted_and_cancelled_replies_keep_their_text_and_reason() -> None:
    conversation = Conversation.new()
    conversation.add_user("one")
    writer = conversation.start_reply()
    writer.add_content("half a rep")
    writer.finish("interrupted", error="the server closed the connection mid-reply")
    conversation.add_user("two")
    conversation.start_reply().finish("cancelled")
    conversation.close()
    first, second = Conversation.open(conversation.id).messages[1::2]
    assert (first.status, first.content) == ("interrupted", "half a rep")
    assert first.error == "the server closed the connection mid-reply"
    assert (second.status, second.content) == ("cancelled", "")
    # An empty cancelled reply is not sent back to the model; the partial one is.
    roles = [message["role"] for message in Conversation.open(conversation.id).api_messages()]
    assert roles == ["user", "assistant", "user"]


def test_a_torn_last_line_is_skipped() -> None:
    conversation = Conversation.new()
    conversation.add_user("fine")
    conversation.close()
    with open(conversation.path, "a") as handle:
        handle.write('{"t": "user", "content": "torn')
    assert [m.content for m in Conversation.open(conversation.id).messages] == ["fine"]


def test_listing_is_newest_first_with_titles(tmp_path: Path) -> None:
    import os

    old = Conversation.new()
    old.add_user("An old question about lighthouses and the sea " * 3)
    old.close()
    os.utime(old.path, (1_000_000, 1_000_000))
    new = Conversation.new()
    new.add_user("A new one")
    new.start_reply().finish("complete")
    new.close()
    Conversation.new()  # never used: leaves no file
    listed = list_conversations()
    assert [summary.id for summary in listed] == [new.id, old.id]
    assert listed[0].title == "A new one" and listed[0].messages == 2
    assert len(listed[1].title) == 60 and listed[1].title.endswith("…")


def test_images_are_kept_by_path_and_sent_as_data_urls(tmp_path: Path) -> None:
    image = tmp_path / "dot.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    conversation = Conversation.new()
    conversation.add_user("what is this?", [str(image)])
    conversation.close()
    message = Conversation.open(conversation.id).api_messages()[0]
    text, picture = message["content"]
    assert text == {"type": "text", "text": "what is this?"}
    assert picture["image_url"]["url"].startswith("data:image/png;base64,")
