"""The chat pane: talk to the served model and see how fast it answers.

Replies stream into Markdown through `Markdown.get_stream` inside an anchored
scroll container: fragments are gathered and written once per 100 ms, and
finished parts of a long reply are sealed (`StreamedMarkdown`), so a frame
costs the same at token 20,000 as at token 200; one full `update()` of the
live tail when the reply ends. The stream runs in an exclusive worker, so
typing never waits on the network. Every reply is written to the transcript
while it streams; the transcript, not the widgets, is what gets copied.

Settings live in a one-line row above the input and change with slash
commands (`/help` lists them), so the pane works at 80x24 without a form; the
commands are parsed apart from the pane (tui/chat_commands.py), which applies
what they ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Collapsible, Input, Static

from backend.chat import (
    ChatClient,
    ChatOptions,
    ContentDelta,
    ReasoningDelta,
    ReplyAccumulator,
    ToolCallDelta,
    default_server,
)
from backend.speed_ledger import SpeedComparison, record_reply
from backend.transcripts import Conversation
from backend.transcripts import Message as TranscriptMessage
from tui import gc_pause
from tui.chat_commands import (
    ChatCommand,
    ChatSettings,
    NewSettings,
    PaneAction,
    Refused,
    SetModel,
    SetSystem,
    SetUrl,
    ShowHelp,
    parse_command,
    settings_line,
)
from tui.chat_stats import stats_line
from tui.screens.conversation_picker import ConversationPicker
from tui.widgets.streamed_markdown import StreamedMarkdown, fold_offscreen


class ChatInput(Input):
    """The message line. Enter takes its text and clears it at once, so what is typed
    next (fast typing, a pasted block) starts the next message instead of being wiped
    when the pane gets to the submitted one."""

    async def action_submit(self) -> None:
        text, self.value = self.value, ""
        self.post_message(self.Submitted(self, text, None))

    async def _on_key(self, event: events.Key) -> None:
        # Enter is taken here, in key order: as a binding it would run only after the
        # key had bubbled up, and the keys behind it would land in the old line.
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            await self.action_submit()
            return
        await super()._on_key(event)


class UserTurn(Static):
    """One user message."""

    def __init__(self, message: TranscriptMessage) -> None:
        attached = "".join(f"\n📎 {Path(image).name}" for image in message.images)
        super().__init__(message.content + attached, markup=False, classes="user-turn")
        self.text = message.content


class ToolCallBlock(Static):
    """A tool call the model asked for: name and pretty-printed arguments."""

    def show(self, call: dict[str, Any]) -> None:
        arguments = call.get("arguments", "")
        with contextlib.suppress(TypeError, ValueError):
            arguments = json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
        self.update(f"⚙ {call.get('name') or '…'}({call.get('id') or ''})\n{arguments}")


class ReplyTurn(Vertical):
    """One assistant reply: reasoning (collapsible), tool calls, text, stats line."""

    FRAME_S = 0.1
    """How often streamed text reaches the Markdown: 10 writes a second. Each write costs a
    layout pass; at 20 a second (50 ms) the keypress-to-screen p95 of the chat latency
    bench was 58-66 ms on this 2-core machine, at 10 a second 39-48 ms."""

    def __init__(self) -> None:
        super().__init__(classes="reply-turn")
        self._pending_body: list[str] = []
        self._pending_reasoning: list[str] = []
        self._tool_blocks: dict[int, ToolCallBlock] = {}
        self._message: TranscriptMessage | None = None

    def compose(self) -> ComposeResult:
        with Collapsible(title="Reasoning", collapsed=False, classes="reasoning"):
            yield StreamedMarkdown(classes="reasoning-text")
        yield Vertical(classes="tool-calls")
        yield StreamedMarkdown(classes="reply-text")
        yield Static("…", classes="reply-stats", markup=False)

    def on_mount(self) -> None:
        self.query_one(".reasoning", Collapsible).display = False
        self._drain_timer = self.set_interval(self.FRAME_S, self._drain, pause=True)

    @property
    def text(self) -> str:
        """The reply as saved once finished; while streaming, what has arrived so far."""
        return self._message.content if self._message is not None else self.body.text

    @property
    def body(self) -> StreamedMarkdown:
        return self.query_one(".reply-text", StreamedMarkdown)

    @property
    def reasoning(self) -> StreamedMarkdown:
        return self.query_one(".reasoning-text", StreamedMarkdown)

    def add_content(self, text: str) -> None:
        """Queue reply text; it is drawn on the next frame. Never waits on the UI."""
        self._pending_body.append(text)
        self._drain_timer.resume()

    def add_reasoning(self, text: str) -> None:
        self._pending_reasoning.append(text)
        self._drain_timer.resume()

    async def _drain(self) -> None:
        """Hand what arrived since the last frame to the Markdown, in one piece each."""
        if self._pending_reasoning:
            self.query_one(".reasoning", Collapsible).display = True
            text = "".join(self._pending_reasoning)
            self._pending_reasoning.clear()
            await self.reasoning.write(text)
        if self._pending_body:
            text = "".join(self._pending_body)
            self._pending_body.clear()
            await self.body.write(text)
        if not self._pending_body and not self._pending_reasoning:
            self._drain_timer.pause()

    async def show_tool_call(self, index: int, call: dict[str, Any]) -> None:
        block = self._tool_blocks.get(index)
        if block is None:
            block = self._tool_blocks[index] = ToolCallBlock(classes="tool-call", markup=False)
            await self.query_one(".tool-calls", Vertical).mount(block)
        block.show(call)

    async def finish(self, message: TranscriptMessage) -> None:
        """Stop streaming, render the live tails in full once, collapse reasoning, show stats.

        Parts sealed while streaming stay as they are: no re-render of the whole reply.
        """
        self._message = message
        self._drain_timer.stop()
        self._pending_body.clear()
        self._pending_reasoning.clear()
        await self.body.finish(message.content)
        await self.reasoning.finish(message.reasoning)
        reasoning = self.query_one(".reasoning", Collapsible)
        if message.reasoning:
            reasoning.display = True
        reasoning.collapsed = True
        for index, call in enumerate(message.tool_calls):
            await self.show_tool_call(index, call)
        self.query_one(".reply-stats", Static).update(stats_line(message))

    def show_speedup(self, speed: SpeedComparison | None) -> None:
        """Add how this spec setting compares with spec off, once both have been timed."""
        if speed is None or speed.speedup is None or self._message is None:
            return
        line = f"{stats_line(self._message)} · {speed.speedup:.2f}x vs spec off"
        self.query_one(".reply-stats", Static).update(line)


class ChatPane(Vertical):
    """Chat with an OpenAI-compatible server (by default the one qtui runs)."""

    BINDINGS = [
        Binding("escape", "stop", "Stop", id="chat.stop", tooltip="Stop the reply being written"),
        Binding("ctrl+n", "new_conversation", "New chat", id="chat.new",
                tooltip="Start a new conversation"),
        Binding("ctrl+y", "copy", "Copy", id="chat.copy",
                tooltip="Copy the mouse selection, else the picked message, else the last "
                        "reply (OSC 52: works over SSH)"),
        Binding("up", "pick(-1)", "Pick earlier", id="chat.pick_earlier", show=False,
                tooltip="Pick an earlier message to copy (ctrl+y)"),
        Binding("down", "pick(1)", "Pick later", id="chat.pick_later", show=False,
                tooltip="Pick a later message; past the last one, back to the newest"),
        Binding("ctrl+o", "history", "History", id="chat.history",
                tooltip="Reopen a past conversation"),
    ]  # fmt: skip

    DEFAULT_CSS = """
    ChatPane { height: 1fr; }
    ChatPane #chat-log { height: 1fr; }
    ChatPane .user-turn { margin: 1 0 0 0; padding: 0 1; background: $boost; }
    ChatPane .reply-turn { height: auto; padding: 0 1; }
    ChatPane StreamedMarkdown Markdown { margin: 0; padding: 0; }
    ChatPane .reply-text Markdown > * { margin: 0; }
    ChatPane .reasoning { padding: 0; margin: 0; border: none; }
    ChatPane .reasoning-text Markdown { color: $text-muted; }
    ChatPane .tool-calls { height: auto; }
    ChatPane .tool-call { border: round $secondary; padding: 0 1; }
    ChatPane .reply-stats { color: $text-muted; }
    ChatPane .user-turn.-picked, ChatPane .reply-turn.-picked { background: $accent 25%; }
    ChatPane #chat-settings { height: 1; color: $text-muted; padding: 0 1; }
    ChatPane #chat-input { height: 3; }
    """

    base_url: reactive[str | None] = reactive(None, init=False)
    """OpenAI-compatible base URL; None: the server qtui runs (its state file)."""
    model: reactive[str | None] = reactive(None, init=False)
    """Model name; None: the first one the server lists."""
    api_key_env: reactive[str | None] = reactive(None, init=False)
    """Name of the environment variable holding the API key."""
    streaming: reactive[bool] = reactive(False, init=False)
    """A reply is being written now."""

    FOLD_CHECK_S = 0.25
    """How often parts far from the viewport are folded (and scrolling unfolds at once)."""
    GC_IDLE_S = 1.0
    """After a reply, full garbage collections stay held until no typing for this long."""

    class ReplyFinished(Message):
        """A reply ended (complete, cancelled or interrupted)."""

        def __init__(
            self,
            pane: ChatPane,
            message: TranscriptMessage,
            speed: SpeedComparison | None = None,
        ) -> None:
            super().__init__()
            self.pane = pane
            self.message = message
            self.speed = speed
            """Spec on vs off speeds, when the reply counted toward them (see speed_ledger)."""

        @property
        def control(self) -> ChatPane:
            return self.pane

    def __init__(
        self,
        base_url: str | None = None,
        *,
        model: str | None = None,
        api_key_env: str | None = None,
        conversation: Conversation | None = None,
        settings: ChatSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        focus_on_mount: bool = True,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.focus_on_mount = focus_on_mount
        """False when hosted in a tab that is not shown first."""
        self.set_reactive(ChatPane.base_url, base_url)
        self.set_reactive(ChatPane.model, model)
        self.set_reactive(ChatPane.api_key_env, api_key_env)
        self.conversation = conversation or Conversation.new()
        self.settings = settings or ChatSettings()
        self.clock = clock
        """Times replies; tests pass a fixed clock for deterministic stats."""
        self._holding_gc = False
        self._typed_at = 0.0
        self._picked: UserTurn | ReplyTurn | None = None

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="chat-log")
        yield Static(id="chat-settings", markup=False)
        yield ChatInput(placeholder="Message (/help for commands, Esc stops)", id="chat-input")

    async def on_mount(self) -> None:
        await self._show_conversation()
        if self.focus_on_mount:
            self.query_one("#chat-input", Input).focus()
        self._folding = False
        self.set_interval(self.FOLD_CHECK_S, self._fold_offscreen)
        log = self.query_one("#chat-log", VerticalScroll)
        self.watch(log, "scroll_y", self._scrolled, init=False)

    def _scrolled(self) -> None:
        # Unfold what scrolling brings near, once the scroll has been laid out.
        self.call_after_refresh(self._fold_offscreen)

    async def _fold_offscreen(self) -> None:
        """Keep only the reply parts near the viewport in the layout (see StreamedMarkdown)."""
        if self._folding:
            return
        self._folding = True
        try:
            log = self.query_one("#chat-log", VerticalScroll)
            await fold_offscreen(log, log.content_region)
        finally:
            self._folding = False

    # -- settings row -------------------------------------------------------
    def _refresh_settings(self) -> None:
        line = settings_line(self.settings, self.model, self.conversation.system)
        self.query_one("#chat-settings", Static).update(line)

    def watch_model(self) -> None:
        self._refresh_settings()

    # -- conversation -------------------------------------------------------
    async def _show_conversation(self) -> None:
        log = self.query_one("#chat-log", VerticalScroll)
        self._picked = None
        await log.remove_children()
        for message in self.conversation.messages:
            if message.role == "user":
                await log.mount(UserTurn(message))
            else:
                turn = ReplyTurn()
                await log.mount(turn)
                await turn.finish(message)
        log.scroll_end(animate=False)
        self._refresh_settings()

    async def open_conversation(self, conversation: Conversation) -> None:
        self.workers.cancel_group(self, "chat")
        self.conversation.close()
        self.conversation = conversation
        await self._show_conversation()

    async def action_new_conversation(self) -> None:
        await self.open_conversation(Conversation.new(self.conversation.system))
        self.notify("New conversation")

    def action_history(self) -> None:
        def reopen(conversation_id: str | None) -> None:
            if conversation_id:
                self.run_worker(
                    self.open_conversation(Conversation.open(conversation_id)),
                    group="chat-history",
                )

        self.app.push_screen(ConversationPicker(), reopen)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Esc stops a reply; with none streaming the key is not ours: it goes on
        # to the screen (which may move focus away from the chat input).
        if action == "stop":
            return self.streaming
        return True

    def watch_streaming(self) -> None:
        self.refresh_bindings()

    def action_stop(self) -> None:
        self.workers.cancel_group(self, "chat")

    def _turns(self) -> list[UserTurn | ReplyTurn]:
        log = self.query_one("#chat-log", VerticalScroll)
        return [child for child in log.children if isinstance(child, UserTurn | ReplyTurn)]

    def action_pick(self, step: int) -> None:
        """Move the picked message up or down the conversation (ctrl+y copies it)."""
        turns = self._turns()
        if self._picked in turns:
            index = turns.index(self._picked) + step
        elif step < 0 and turns:
            index = len(turns) - 1
        else:
            return
        self._pick(turns[max(index, 0)] if index < len(turns) else None)

    def _pick(self, turn: UserTurn | ReplyTurn | None) -> None:
        if self._picked is not None:
            self._picked.remove_class("-picked")
        self._picked = turn
        log = self.query_one("#chat-log", VerticalScroll)
        if turn is None:
            log.scroll_end(animate=False)
            log.anchor()
            return
        turn.add_class("-picked")
        log.scroll_to_widget(turn, animate=False, top=True)

    def action_copy(self) -> None:
        selected = self.screen.get_selected_text()
        if selected:
            text, what = selected, "the selection"
        elif self._picked is not None and self._picked.is_attached:
            text, what = self._picked.text, "the picked message"
        else:
            replies = [m for m in self.conversation.messages if m.role == "assistant" and m.content]
            if not replies:
                self.notify("No reply to copy yet", severity="warning")
                return
            text, what = replies[-1].content, "the last reply"
        self.app.copy_to_clipboard(text)
        self.notify(f"Copied {what}: {len(text)} characters")

    # -- input ----------------------------------------------------------------
    @on(Input.Submitted, "#chat-input")
    async def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        command = parse_command(text, self.settings)
        if command is not None:
            await self._command(command)
            return
        if self.streaming:
            # Kept for later: back in front of anything typed since.
            event.input.value = event.value + event.input.value
            event.input.cursor_position = len(event.value)
            self.notify("A reply is still being written: Esc stops it", severity="warning")
            return
        await self.send(text)

    async def send(self, text: str) -> None:
        """Add a user message and stream the reply to it."""
        images = [str(image) for image in self.settings.images]
        self.settings = replace(self.settings, images=())
        message = self.conversation.add_user(text, images)
        self._pick(None)
        log = self.query_one("#chat-log", VerticalScroll)
        turn = ReplyTurn()
        await log.mount_all([UserTurn(message), turn])
        log.anchor()
        self._refresh_settings()
        self.streaming = True
        self._stream_reply(turn, self.conversation.api_messages(), self.settings.options())

    async def _command(self, command: ChatCommand) -> None:
        match command:
            case NewSettings(settings):
                self.settings = settings
            case SetSystem(prompt):
                self.conversation.set_system(prompt)
            case SetModel(name):
                self.model = name
            case SetUrl(url):
                self.base_url = url
            case PaneAction("new_conversation"):
                await self.action_new_conversation()
            case PaneAction("copy"):
                self.action_copy()
            case PaneAction("history"):
                self.action_history()
            case ShowHelp(text):
                self.notify(text, title="Chat commands", timeout=10)
            case Refused(error):
                self.notify(error, severity="error")
        self._refresh_settings()

    # -- streaming ------------------------------------------------------------
    def _target(self) -> tuple[str, str | None] | None:
        if self.base_url:
            return self.base_url, self.api_key_env
        found = default_server()
        if found is None:
            return None
        return found[0], self.api_key_env or found[1]

    @work(exclusive=True, group="chat", exit_on_error=False, description="chat reply")
    async def _stream_reply(
        self, turn: ReplyTurn, messages: list[dict[str, Any]], options: ChatOptions
    ) -> None:
        # A full garbage collection mid-reply stalls keys and frames for up to
        # ~350 ms; the one held off runs once the user is not typing (gc_pause).
        if not self._holding_gc:
            gc_pause.hold()
            self._holding_gc = True
        try:
            await self._write_reply(turn, messages, options)
        finally:
            self.set_timer(self.GC_IDLE_S, self._release_gc_when_idle)

    @on(Input.Changed, "#chat-input")
    def _typing(self) -> None:
        self._typed_at = time.monotonic()

    def _release_gc_when_idle(self) -> None:
        if not self._holding_gc or self.streaming:
            return
        idle_s = time.monotonic() - self._typed_at
        if idle_s < self.GC_IDLE_S:
            self.set_timer(self.GC_IDLE_S - idle_s, self._release_gc_when_idle)
            return
        self._holding_gc = False
        gc_pause.release(collect=True)

    def on_unmount(self) -> None:
        if self._holding_gc:
            self._holding_gc = False
            gc_pause.release()

    async def _write_reply(
        self, turn: ReplyTurn, messages: list[dict[str, Any]], options: ChatOptions
    ) -> None:
        """Stream one reply into `turn` and the transcript; always finish both."""
        conversation = self.conversation
        writer = conversation.start_reply(self.model)
        reply = ReplyAccumulator(clock=self.clock)
        cancelled = False
        served_by: str | None = None
        try:
            target = self._target()
            if target is None:
                reply.error = "no server: start one (s) or set /url"
                return
            url, key_env = target
            served_by = url
            async with ChatClient(url, model=self.model, api_key_env=key_env) as client:
                async for event in client.stream_reply(messages, options, reply):
                    if isinstance(event, ContentDelta):
                        writer.add_content(event.text)
                        turn.add_content(event.text)
                    elif isinstance(event, ReasoningDelta):
                        writer.add_reasoning(event.text)
                        turn.add_reasoning(event.text)
                    elif isinstance(event, ToolCallDelta):
                        call = reply.tool_calls[event.index]
                        await turn.show_tool_call(event.index, vars(call))
                if self.model is None and client.model:
                    self.model = client.model
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            message = writer.finish_reply(reply, cancelled=cancelled)
            if message.error and "maximum context length" in message.error:
                self.notify(
                    "The conversation no longer fits the model's context: ctrl+n starts a "
                    "new one (this one stays in the history, ctrl+o)",
                    severity="warning",
                    timeout=10,
                )
            speed = None
            try:
                await turn.finish(message)
                if message.status == "complete" and served_by is not None:
                    speed = await asyncio.to_thread(
                        record_reply,
                        served_by,
                        reply.stats.tokens_per_s,
                        reply.stats.completion_tokens,
                    )
                    turn.show_speedup(speed)
            finally:  # the pane must never stay "streaming" (Esc would do nothing)
                self.streaming = False
                self.post_message(self.ReplyFinished(self, message, speed))
