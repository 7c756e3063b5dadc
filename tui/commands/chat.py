"""`qtui chat "prompt"`: one streamed reply, without the panel.

The reply text alone goes to stdout as it streams (pipe-friendly); the stats
line goes to stderr. `--json` prints one object instead. No system prompt is
sent unless `--system` gives one. The exchange is saved as a conversation (the
panel's history, ctrl+o, lists it) unless `--no-save`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from backend.chat import (
    ChatClient,
    ChatOptions,
    ContentDelta,
    ReasoningDelta,
    ReplyAccumulator,
    build_messages,
    default_server,
    user_message,
)
from backend.speed_ledger import record_reply
from backend.transcripts import Conversation, ReplyWriter
from tui.commands.errors import CommandError


def register(subparsers: Any) -> None:
    chat = subparsers.add_parser("chat", help="send one prompt, stream the reply to stdout")
    chat.add_argument("prompt", help="the user message")
    chat.add_argument("--url", help="OpenAI-compatible base URL (default: the server qtui runs)")
    chat.add_argument("--model", help="model name (default: the first one the server lists)")
    chat.add_argument("--system", help="system prompt (none unless given)")
    chat.add_argument("--temperature", type=float, help="sampling temperature")
    chat.add_argument("--top-p", type=float, help="nucleus sampling")
    chat.add_argument("--max-tokens", type=int, help="most tokens to generate")
    chat.add_argument(
        "--thinking",
        choices=("on", "off"),
        help="enable_thinking for Qwen3-style chat templates (default: the template's)",
    )
    chat.add_argument(
        "--ignore-eos",
        action="store_true",
        help="generate --max-tokens even past the end token (fixed-length speed runs)",
    )
    chat.add_argument("--api-key-env", help="name of the environment variable holding the API key")
    chat.add_argument("--json", action="store_true", help="print one JSON object at the end")
    chat.add_argument(
        "--no-save",
        action="store_true",
        help="keep no transcript (by default the panel's history lists the exchange)",
    )
    chat.set_defaults(handler=cmd_chat)


def _target(url: str | None, api_key_env: str | None) -> tuple[str, str | None]:
    if url:
        if not url.startswith(("http://", "https://")):
            raise CommandError(f"bad --url {url!r}: expected http://HOST:PORT", 2)
        return url, api_key_env
    found = default_server()
    if found is None:
        raise CommandError("no server: start one with `qtui serve start`, or pass --url")
    return found[0], api_key_env or found[1]


def cmd_chat(args: Any) -> int:
    url, api_key_env = _target(args.url, args.api_key_env)
    options = ChatOptions(
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        enable_thinking=None if args.thinking is None else args.thinking == "on",
        ignore_eos=args.ignore_eos,
    )
    messages = build_messages([user_message(args.prompt)], args.system)
    conversation = None if args.no_save else Conversation.new(args.system)
    writer = None
    if conversation is not None:
        conversation.add_user(args.prompt)
        writer = conversation.start_reply(args.model)
    try:
        reply = asyncio.run(
            _stream(url, args.model, api_key_env, messages, options, args.json, writer)
        )
    finally:
        if conversation is not None:
            conversation.close()
    speed = None
    if reply.error is None:
        speed = record_reply(url, reply.stats.tokens_per_s, reply.stats.completion_tokens)
    if reply.error and not args.json:
        if reply.text:
            sys.stdout.write("\n")
        raise CommandError(reply.error)
    if args.json:
        print(
            json.dumps(
                {
                    "text": reply.text,
                    "reasoning": reply.reasoning,
                    "tool_calls": [vars(call) for call in reply.tool_calls.values()],
                    "finish_reason": reply.finish_reason,
                    "usage": vars(reply.usage) if reply.usage else None,
                    "stats": reply.stats.to_json(),
                    "error": reply.error,
                    "conversation": conversation.id if conversation else None,
                    "speed": speed.to_json() if speed else None,
                }
            )
        )
        return 1 if reply.error else 0
    sys.stdout.write("\n")
    summary = reply.stats.summary()
    if speed is not None and speed.speedup is not None:
        summary += f" · {speed.speedup:.2f}x vs spec off"
    if summary:
        print(summary, file=sys.stderr)
    return 0


async def _stream(
    url: str,
    model: str | None,
    api_key_env: str | None,
    messages: list[dict[str, Any]],
    options: ChatOptions,
    quiet: bool,
    writer: ReplyWriter | None,
) -> ReplyAccumulator:
    """Stream the reply to stdout (unless `quiet`) and into the transcript's `writer`."""
    reply = ReplyAccumulator()
    cancelled = False
    try:
        async with ChatClient(url, model=model, api_key_env=api_key_env) as client:
            async for event in client.stream_reply(messages, options, reply):
                if isinstance(event, ContentDelta):
                    if writer is not None:
                        writer.add_content(event.text)
                    if not quiet:
                        sys.stdout.write(event.text)
                        sys.stdout.flush()
                elif isinstance(event, ReasoningDelta) and writer is not None:
                    writer.add_reasoning(event.text)
    except asyncio.CancelledError:  # Ctrl-C: what arrived is kept, marked stopped
        cancelled = True
        raise
    finally:
        if writer is not None:
            writer.finish_reply(reply, cancelled=cancelled)
    return reply
