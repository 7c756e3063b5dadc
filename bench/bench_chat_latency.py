"""Keypress-to-screen latency of the ChatPane while a reply streams at 2,000 tok/s.

A synthetic OpenAI-style SSE source (tests/chat_sse_source.py, in its own
process so it does not share the panel's event loop) streams one-token chunks
at the chosen rate into a ChatPane running headless at 80x24. While it
streams, digits are posted as key events, the way the terminal driver posts
them; the latency of one key is the time until a screen update that contains
the typed digit is composed (the synthetic text has no digits). Goal: p95 <= 50 ms.
It also prints the machine's load (other work skews the figure) and how long
each full garbage collection took: the pane holds them off while a reply
streams, so one runs after it.

    .venv/bin/python bench/bench_chat_latency.py [--rate 2000] [--keys 100]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("QTUI_DATA_DIR", tempfile.mkdtemp(prefix="qtui-bench-"))

from textual import events  # noqa: E402
from textual.app import App, ComposeResult  # noqa: E402
from textual.widgets import Input  # noqa: E402

from tui.widgets.chat import ChatPane  # noqa: E402


class BenchHost(App[None]):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.waiting_for: str | None = None
        self.seen = asyncio.Event()
        self.frames = 0

    def compose(self) -> ComposeResult:
        yield ChatPane(self.url)

    def _display(self, screen: Any, renderable: Any) -> None:
        """Every composed screen update passes here (headless: nothing is written)."""
        if renderable is None:
            return
        self.frames += 1
        if self.waiting_for is not None:
            text = renderable.render_segments(self.console)
            if self.waiting_for in text:
                self.waiting_for = None
                self.seen.set()
        super()._display(screen, renderable)


async def measure(url: str, keys: int, tokens_expected: int) -> dict[str, Any]:
    app = BenchHost(url)
    latencies: list[float] = []
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(ChatPane)
        field = app.query_one("#chat-input", Input)
        await pilot.press(*"stream please", "enter")
        while not pane.conversation.messages or len(pane.conversation.messages) < 2:
            await asyncio.sleep(0.01)
        reply = pane.conversation.messages[-1]
        while len(reply.content) < 200:
            await asyncio.sleep(0.01)
        stream_started = time.monotonic()
        chars_at_start = len(reply.content)
        rng = random.Random(7)
        for index in range(keys):
            if not pane.streaming:
                break
            digit = str(index % 10)
            field.value = ""
            await asyncio.sleep(rng.uniform(0.03, 0.08))
            app.seen.clear()
            app.waiting_for = digit
            started = time.perf_counter()
            app.post_message(events.Key(digit, digit))
            try:
                await asyncio.wait_for(app.seen.wait(), timeout=5)
            except TimeoutError:
                latencies.append(5.0)
                continue
            latencies.append(time.perf_counter() - started)
        keys_done = time.perf_counter()
        streamed_s = time.monotonic() - stream_started
        chars_streamed = len(reply.content) - chars_at_start
        while pane.streaming:
            await asyncio.sleep(0.05)
        await app.workers.wait_for_complete()
        await asyncio.sleep(2.0)  # the full collection held while it streamed runs now
        stats = reply.stats or {}
    return {
        "latencies": latencies,
        "chars_per_s": chars_streamed / streamed_s if streamed_s else 0.0,
        "stats": stats,
        "frames": app.frames,
        "status": reply.status,
        "keys_done": keys_done,
    }


class FullCollections:
    """Times full (oldest-generation) garbage collections: each one stalls the event loop."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []
        """(when it ended, how long it took), perf_counter seconds."""
        self._started = 0.0

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            ended = time.perf_counter()
            self.pauses.append((ended, ended - self._started))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="tokens per second")
    parser.add_argument("--keys", type=int, default=100, help="key presses to time")
    parser.add_argument("--tokens", type=int, default=0, help="reply length (default: enough)")
    args = parser.parse_args()
    load_before = os.getloadavg()  # other work on the machine skews latency
    tokens = args.tokens or int(args.rate * (args.keys * 0.1 + 5))
    source = subprocess.Popen(
        [sys.executable, "-m", "tests.chat_sse_source", "--rate", str(args.rate),
         "--tokens", str(tokens)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert source.stdout is not None
        url = source.stdout.readline().strip()
        with FullCollections() as collections:
            result = asyncio.run(measure(url, args.keys, tokens))
    finally:
        source.terminate()
        source.wait(timeout=5)
    ms = sorted(value * 1000 for value in result["latencies"])
    if not ms:
        print("no key presses were timed (the reply ended too early)")
        return 1
    p50 = statistics.median(ms)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    stats = result["stats"]
    load = " ".join(f"{value:.2f}" for value in load_before)
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (1, 5, 15 min) before the run")
    print(f"source rate: {args.rate:.0f} tok/s, reply {tokens} tokens, status {result['status']}")
    print(
        f"pane received: {stats.get('tokens_per_s') or 0:.0f} tok/s (usage/decode time), "
        f"{result['chars_per_s']:.0f} chars/s while keys were timed, {result['frames']} frames"
    )
    print(
        f"keypress-to-screen over {len(ms)} keys: p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
        f"max {ms[-1]:.1f} ms (goal p95 <= 50 ms: {'met' if p95 <= 50 else 'NOT met'})"
    )
    keys_done = result["keys_done"]
    for label, pauses in (
        ("while keys were timed", [s for t, s in collections.pauses if t <= keys_done]),
        ("after (reply end + 2 s)", [s for t, s in collections.pauses if t > keys_done]),
    ):
        listed = ", ".join(f"{seconds * 1000:.0f} ms" for seconds in pauses) or "none"
        print(f"full garbage collections {label}: {listed}")
    return 0 if p95 <= 50 else 1


if __name__ == "__main__":
    sys.exit(main())
