"""The ChatPane in a small host App at 80x24: keys in, streamed reply out, Esc stops it."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Input, Static
from textual.worker import WorkerState

from backend.config import cpu_profile
from backend.engine import Engine
from backend.supervisor import ServerSupervisor
from backend.transcripts import Conversation
from tests.chat_sse_source import SSESource, scripted_reply
from tests.conftest import RunningServer, free_port
from tests.holding_relay import HoldingRelay
from tui import gc_pause
from tui.widgets.chat import ChatPane, ReplyTurn, UserTurn
from tui.widgets.streamed_markdown import FoldedPart, SealedParts

SIZE = (80, 24)


class HostScreen(Screen[None]):
    """A screen with its own Esc binding, as the app's screens have (focus leaves the chat)."""

    BINDINGS = [Binding("escape", "leave_chat", "Leave chat")]

    def __init__(self, pane: ChatPane) -> None:
        super().__init__()
        self.pane = pane
        self.escapes = 0

    def compose(self) -> ComposeResult:
        yield self.pane

    def action_leave_chat(self) -> None:
        self.escapes += 1
        self.set_focus(None)


class Host(App[None]):
    def __init__(self, pane: ChatPane) -> None:
        super().__init__()
        self.pane = pane
        self.finished: list[ChatPane.ReplyFinished] = []

    def get_default_screen(self) -> HostScreen:
        return HostScreen(self.pane)

    @property
    def host_screen(self) -> HostScreen:
        assert isinstance(self.screen, HostScreen)
        return self.screen

    def on_chat_pane_reply_finished(self, message: ChatPane.ReplyFinished) -> None:
        self.finished.append(message)


async def until(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 60) -> None:
    """Let the app run until `condition` holds (a condition, not a fixed sleep)."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"condition not reached in {timeout} s")


async def type_keys(pilot: Pilot[Any], *keys: str) -> None:
    """Post key events the way the terminal driver does, without waiting for an idle app."""
    for key in keys:
        char = "\r" if key == "enter" else "\x1b" if key == "escape" else key
        pilot.app.post_message(events.Key(key, char))
    await pilot.pause(0.02)


def reply_text(app: App[Any]) -> str:
    turns = list(app.query(ReplyTurn))
    return turns[-1].body.text if turns else ""


def stats_text(app: App[Any]) -> str:
    return str(list(app.query(ReplyTurn))[-1].query_one(".reply-stats", Static).render())


async def test_send_by_keys_stream_then_stop_with_escape(vllm_server: RunningServer) -> None:
    # The relay holds the reply open after its first dozen tokens: on a busy machine the
    # tiny model otherwise finishes 480 tokens before the app reads the Esc key.
    async with HoldingRelay(vllm_server.url) as relay:
        app = Host(ChatPane(relay.url))
        async with app.run_test(size=SIZE) as pilot:
            pane = app.pane
            await pilot.press(
                *"/max 480", "enter", *"/temp 0.9", "enter", *"/ignore_eos on", "enter"
            )
            # Keys go in as the terminal driver sends them: pilot.press would wait for
            # the busy (streaming) app to go idle.
            await type_keys(pilot, *"Tell me a long story", "enter")
            await until(pilot, lambda: len(reply_text(app)) > 0 or bool(app.finished))
            assert relay.held == 1
            assert not app.finished, f"the reply ended before Esc: {app.finished[0].message}"
            # Typing stays live while the reply streams.
            await type_keys(pilot, *"next")
            assert app.query_one(Input).value == "next"
            assert not app.finished, "the reply ended before Esc"
            await type_keys(pilot, "escape")
            await until(pilot, lambda: bool(app.finished))
            assert app.host_screen.escapes == 0, "Esc stopped the reply: the screen never saw it"
            assert not pane.streaming
            stopped = app.finished[-1].message
            assert stopped.status == "cancelled" and stopped.content
            assert stats_text(app).startswith("■ stopped")
            assert reply_text(app) == stopped.content
            # Server still healthy; the next message (typed by keys) completes.
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{vllm_server.url}/health")).status_code == 200
            app.query_one(Input).value = ""
            relay.hold_replies = False
            await pilot.press(*"/max 6", "enter", *"again", "enter")
            await until(pilot, lambda: len(app.finished) == 2)
            done = app.finished[-1].message
            assert (done.status, done.finish_reason) == ("complete", "length"), done.error
            assert "tok/s" in stats_text(app) and "out 6" in stats_text(app)
            assert pane.model == "tiny"
            # No reply streaming: Esc is the screen's again (focus leaves the input).
            await pilot.press("escape")
            assert app.host_screen.escapes == 1 and app.focused is None
    on_disk = Conversation.open(pane.conversation.id).messages
    assert [m.status for m in on_disk if m.role == "assistant"] == ["cancelled", "complete"]
    assert on_disk[1].content == stopped.content


async def test_escape_when_idle_reaches_the_screen() -> None:
    app = Host(ChatPane("http://127.0.0.1:9"))  # nothing is sent: no server needed
    async with app.run_test(size=SIZE) as pilot:
        assert app.focused is app.query_one("#chat-input", Input)
        assert "escape" not in app.active_bindings or (
            app.active_bindings["escape"].node is app.host_screen
        ), "the pane's Stop binding is hidden while nothing streams"
        await pilot.press("escape")
        assert app.host_screen.escapes == 1
        assert app.focused is None


@pytest.mark.slow
async def test_server_killed_mid_reply_keeps_the_partial_reply(
    engine: Engine, tiny_model: Path, tmp_path: Path
) -> None:
    profile = cpu_profile(str(tiny_model), port=free_port())
    supervisor = ServerSupervisor(engine, state_dir=tmp_path / "own-server")
    status = supervisor.start("doomed", profile, timeout_s=300)
    assert status.record is not None
    try:
        # The relay holds the reply open after its first dozen tokens, so the kill lands
        # mid-reply however busy the machine is.
        async with HoldingRelay(status.record.url) as relay:
            app = Host(ChatPane(relay.url))
            async with app.run_test(size=SIZE) as pilot:
                # ignore_eos: a random-weight model may emit its end token at any step.
                await pilot.press(*"/max 400", "enter", *"/ignore_eos on", "enter")
                # Typed as the terminal sends keys (pilot.press waits for an idle app).
                await type_keys(pilot, *"Keep talking", "enter")
                await until(pilot, lambda: len(reply_text(app)) > 0 or bool(app.finished))
                assert relay.held == 1 and not app.finished
                os.killpg(status.record.pgid, signal.SIGKILL)
                await until(pilot, lambda: bool(app.finished))
                worker_states = [worker.state for worker in app.pane.workers]
                assert WorkerState.ERROR not in worker_states, "no exception escaped the worker"
                reply = app.finished[-1].message
                assert reply.status == "interrupted" and reply.content
                assert reply.error == f"the server at {relay.url} closed the connection mid-reply"
                assert stats_text(app).startswith(f"⚠ interrupted: {reply.error}")
                assert reply_text(app) == reply.content
        saved = Conversation.open(app.pane.conversation.id).messages[-1]
        assert (saved.status, saved.error, saved.content) == (
            "interrupted", reply.error, reply.content,
        )  # fmt: skip
    finally:
        supervisor.stop()


async def test_settings_commands_shape_the_request(tmp_path: Path) -> None:
    image = tmp_path / "pixel.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    async with SSESource(scripted_reply("fine")) as source:
        app = Host(ChatPane(source.url))
        async with app.run_test(size=SIZE) as pilot:
            for command in ("/temp 0.3", "/top_p 0.5", "/max 9", "/think off",
                            "/ignore_eos on", "/system Be kind.", f"/image {image}"):  # fmt: skip
                await pilot.press(*command, "enter")
            settings_row = str(app.query_one("#chat-settings", Static).render())
            assert "temp 0.3" in settings_row and "📎 pixel.png" in settings_row
            assert "ignore eos" in settings_row
            await pilot.press(*"/temp 7", "enter")  # out of range: refused, kept
            assert app.pane.settings.temperature == 0.3
            await pilot.press(*"look", "enter")
            await until(pilot, lambda: bool(app.finished))
            await pilot.press("ctrl+y")
            assert app.clipboard == "fine"
    request = source.requests[0]
    assert (request["temperature"], request["top_p"], request["max_tokens"]) == (0.3, 0.5, 9)
    assert request["chat_template_kwargs"] == {"enable_thinking": False}
    assert request["ignore_eos"] is True
    system, user = request["messages"]
    assert system == {"role": "system", "content": "Be kind."}
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


async def test_a_long_reply_is_sealed_in_parts_folded_and_reopened_whole() -> None:
    async with SSESource(rate=50_000, tokens=4000) as source:
        app = Host(ChatPane(source.url))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press(*"a long one", "enter")
            await until(pilot, lambda: bool(app.finished))
            reply = app.finished[-1].message
            turn = app.query(ReplyTurn).last()
            parts = turn.query_one(SealedParts)
            assert len(reply.content) > 20_000 and len(parts.children) >= 8
            assert turn.body.text == reply.content
            # Parts far above the end (where the log is scrolled) leave the layout.
            await until(pilot, lambda: len(parts.query_children(FoldedPart)) >= 6)
            assert turn.body.text == reply.content
            await app.pane.open_conversation(Conversation.open(app.pane.conversation.id))
            await pilot.pause()
            assert reply_text(app) == reply.content


async def test_full_collections_wait_for_the_reply_and_for_typing_to_pause() -> None:
    async with SSESource(scripted_reply("short")) as source:
        pane = ChatPane(source.url)
        pane.GC_IDLE_S = 0.3
        app = Host(pane)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press(*"hi", "enter")
            assert gc_pause.held(), "held from the start of the reply"
            await until(pilot, lambda: bool(app.finished))
            typing_until = time.monotonic() + 0.8
            while time.monotonic() < typing_until:  # the user types on after the reply
                await pilot.press("x")
                assert gc_pause.held()
                await pilot.pause(0.1)
            await until(pilot, lambda: not gc_pause.held(), timeout=5)


async def test_new_conversation_and_reopen_from_history() -> None:
    async with SSESource(scripted_reply("first answer")) as source:
        app = Host(ChatPane(source.url))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press(*"first question", "enter")
            await until(pilot, lambda: bool(app.finished))
            first_id = app.pane.conversation.id
            await pilot.press("ctrl+n")
            await until(pilot, lambda: not app.query(ReplyTurn))
            assert app.pane.conversation.id != first_id
            await pilot.press("ctrl+o")
            await pilot.press("enter")  # the newest listed: the only one with messages
            await until(pilot, lambda: len(app.query(ReplyTurn)) == 1)
            assert app.pane.conversation.id == first_id
            assert reply_text(app) == "first answer"


def _fixed_clock() -> Callable[[], float]:
    ticks = itertools.count()
    return lambda: next(ticks) * 0.05


class SnapshotHost(App[None]):
    """A finished exchange from a fixed script, timed by a fixed clock."""

    SCRIPT = scripted_reply(
        "Here is the plan:\n\n- quantize with **AutoRound**\n- serve with `vllm`\n\nDone.",
        reasoning="The user wants a plan. Keep it short.",
    )

    def compose(self) -> ComposeResult:
        yield ChatPane(clock=_fixed_clock())

    async def on_mount(self) -> None:
        self.source = await SSESource(self.SCRIPT).start()
        self.query_one(ChatPane).base_url = self.source.url
        self.query_one(Input).cursor_blink = False

    async def on_unmount(self) -> None:
        await self.source.stop()


def test_snapshot_finished_exchange_reasoning_collapsed(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press(*"How do I serve a quantized model?", "enter")
        await until(pilot, lambda: not pilot.app.query_one(ChatPane).streaming)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(SnapshotHost(), terminal_size=SIZE, run_before=run_before)


async def test_pick_a_message_with_arrows_and_copy_it() -> None:
    async with SSESource(scripted_reply("fine thanks")) as source:
        app = Host(ChatPane(source.url))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+y")
            assert app.clipboard == "", "nothing to copy before the first reply"
            for prompt in ("first question", "second question"):
                await pilot.press(*prompt, "enter")
                await until(pilot, lambda: not app.pane.streaming and bool(app.finished))
            await pilot.press("ctrl+y")
            assert app.clipboard == "fine thanks"  # nothing picked: the last reply
            await pilot.press("up", "up", "ctrl+y")
            assert app.clipboard == "second question"
            picked = app.query(".-picked")
            assert len(picked) == 1 and isinstance(picked.first(), UserTurn)
            await pilot.press("up", "up", "up", "ctrl+y")  # past the first: stays there
            assert app.clipboard == "first question"
            await pilot.press("down", "ctrl+y")
            assert app.clipboard == "fine thanks"
            await pilot.press("down", "down", "down")  # past the newest: nothing picked
            assert len(app.query(".-picked")) == 0
            await pilot.press(*"/copy", "enter")
            assert app.clipboard == "fine thanks"


async def test_a_reply_to_the_server_qtui_runs_is_timed_for_the_spec_comparison(
    vllm_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QTUI_STATE_DIR", str(vllm_server.state_dir))
    app = Host(ChatPane())  # no URL: the server qtui runs
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"/max 40", "enter", *"/ignore_eos on", "enter")
        await pilot.press(*"Count with me", "enter")
        await until(pilot, lambda: bool(app.finished))
        finished = app.finished[-1]
        assert finished.message.status == "complete", finished.message.error
        speed = finished.speed
        assert speed is not None and speed.running == "off"
        timed = speed.settings["off"]
        assert timed.replies >= 1 and timed.median_tps > 0
        # With spec off and nothing timed with it on, the line says what to do.
        assert speed.speedup is None and "chat with spec on too" in speed.describe()


async def test_a_conversation_past_the_context_says_how_to_go_on(
    vllm_server: RunningServer,
) -> None:
    app = Host(ChatPane(vllm_server.url))
    async with app.run_test(size=SIZE) as pilot:
        app.query_one("#chat-input", Input).value = "word " * 700  # the tiny server has 512
        await pilot.press("enter")
        await until(pilot, lambda: bool(app.finished))
        reply = app.finished[-1].message
        assert reply.status == "interrupted" and "maximum context length" in (reply.error or "")
        await pilot.pause()
        assert any("ctrl+n starts a new one" in n.message for n in app._notifications)


async def test_lines_typed_in_one_burst_are_each_taken_whole() -> None:
    async with SSESource(scripted_reply("fine")) as source:
        app = Host(ChatPane(source.url))
        async with app.run_test(size=SIZE) as pilot:
            # As a fast typist or a paste sends them: no pause after each Enter.
            await type_keys(pilot, *"/max 9", "enter", *"/temp 0.3", "enter", *"hello", "enter")
            await until(pilot, lambda: bool(app.finished))
            assert (app.pane.settings.max_tokens, app.pane.settings.temperature) == (9, 0.3)
    request = source.requests[0]
    assert (request["max_tokens"], request["temperature"]) == (9, 0.3)
    assert request["messages"][-1]["content"] == "hello"


async def test_a_message_sent_while_a_reply_streams_is_kept_in_the_input() -> None:
    async with SSESource(rate=200, tokens=2000) as source:
        app = Host(ChatPane(source.url))
        async with app.run_test(size=SIZE) as pilot:
            await type_keys(pilot, *"first", "enter")
            await until(pilot, lambda: app.pane.streaming and len(reply_text(app)) > 0)
            await type_keys(pilot, *"second", "enter", *" more")
            await pilot.pause(0.1)
            assert app.query_one("#chat-input", Input).value == "second more"
            await type_keys(pilot, "escape")
            await until(pilot, lambda: bool(app.finished))
