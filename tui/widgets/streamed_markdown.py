"""Markdown that streams in cheaply however long it grows: finished parts are sealed.

One Markdown widget holding a whole long reply makes every streamed frame
re-arrange all of its blocks (hundreds for a 20k-token reply), and Textual's
`Markdown.append` re-reads its whole source each time. So the text is shown as
a column of Markdown widgets: once the live one passes `SEAL_AT` characters,
it is cut at the next blank line outside a code fence, its stream is stopped
and it stays as it is (a finished part, whose layout Textual keeps cached),
and a new live Markdown with its own stream takes what follows. The cost of a
frame then depends on the size of the live part, not on the whole reply.

Textual still visits every widget on the screen in each layout, on screen or
not, and keeps their rendered lines in memory. So sealed parts far from the
viewport are folded (`fold_offscreen`): swapped for a blank placeholder of the
same height that keeps the text, and parsed again when they come near the
viewport. A long conversation then costs a frame about what one screen does.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.errors import NoWidget
from textual.geometry import Region, Size
from textual.widget import MountError, Widget
from textual.widgets import Markdown

from tui.textual_internals import MarkdownStream, layout_generation

SEAL_AT = 2500
"""Characters a live part holds before it is sealed at the next safe blank line."""
FOLD_AFTER_S = 0.5
"""A sealed part is folded no sooner than this after it mounted (it must be laid out)."""

_NOT_A_PART_START = re.compile(r"[ \t]|(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)|#|>|```|~~~")
"""Lines a sealed part must not start with: indented, list item, heading, quote, fence."""
_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$", re.MULTILINE)


def fenced_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each fenced code block; an unclosed one runs to the end of `text`."""
    spans: list[tuple[int, int]] = []
    opened: tuple[int, str] | None = None  # (start, fence) of the block we are inside
    for match in _FENCE_LINE.finditer(text):
        fence, rest = match.group(1), match.group(2)
        if opened is None:
            if fence[0] == "`" and "`" in rest:
                continue  # not a fence: a backtick fence's info string has no backticks
            opened = (match.start(), fence)
        elif fence[0] == opened[1][0] and len(fence) >= len(opened[1]) and not rest.strip():
            spans.append((opened[0], match.end()))
            opened = None
    if opened is not None:
        spans.append((opened[0], len(text)))
    return spans


def seal_point(text: str, soft_limit: int = SEAL_AT) -> int:
    """Where `text` can be cut so that both sides render as they would together; 0: nowhere yet.

    The cut is just after the first blank line at or past `soft_limit` that
    lies outside a code fence and is followed by a plain
    block: not indented (it could continue a list item or be indented code),
    not a list item (a loose list would become two lists, an ordered one would
    restart its numbers), not a block with a top margin (heading, quote,
    fence: margins of blocks in two Markdown widgets add up instead of
    overlapping), not the text of a setext heading. The next line and the
    start of the one after it must have arrived, so a cut is never guessed.
    """
    search_from = soft_limit
    spans: list[tuple[int, int]] | None = None
    while (blank := text.find("\n\n", search_from)) >= 0:
        cut = blank + 2
        while cut < len(text) and text[cut] == "\n":
            cut += 1
        line_end = text.find("\n", cut)
        if line_end < 0 or line_end + 1 >= len(text):
            return 0
        next_line, line_after = text[cut:line_end], text[line_end + 1 : line_end + 2]
        if spans is None:
            spans = fenced_spans(text)
        if (
            not _NOT_A_PART_START.match(next_line)
            and line_after not in ("=", "-")
            and not any(start < blank < end for start, end in spans)
        ):
            return cut
        search_from = cut
    return 0


def split_parts(text: str, soft_limit: int = SEAL_AT) -> list[str]:
    """`text` cut at every seal point: the parts a finished text is shown in."""
    parts: list[str] = []
    while cut := seal_point(text, soft_limit):
        parts.append(text[:cut])
        text = text[cut:]
    parts.append(text)
    return parts


HeightCall = Callable[[Size, Size, int], int]


def height_for_width(container: Size, viewport: Size, width: int, textual_call: HeightCall) -> int:
    """A column's content height, asked with a container of height 0.

    Textual lays out a column whose children are all auto height against its
    parent's current height, which changes every frame while a reply grows;
    that height does not change the result (no child is sized relative to it)
    but it is part of the arrangement cache key, so every frame laid out the
    same blocks again, several times over. A fixed key keeps them cached.
    """
    return textual_call(Size(container.width, 0), viewport, width)


class MarkdownPart(Markdown):
    """A Markdown laid out once per frame, not once per ancestor (see height_for_width)."""

    def on_mount(self) -> None:
        self.mounted_at = time.monotonic()

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return height_for_width(container, viewport, width, super().get_content_height)


class Column(Vertical):
    """A Vertical of auto-height children laid out once per frame (see height_for_width)."""

    DEFAULT_CSS = """
    Column { height: auto; }
    """

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return height_for_width(container, viewport, width, super().get_content_height)


class FoldedPart(Widget):
    """A sealed part taken out of the layout while far from the viewport: its text and height."""

    DEFAULT_CSS = """
    FoldedPart { width: 1fr; }
    """

    def __init__(self, source: str, height: int) -> None:
        super().__init__()
        self.source = source
        self.styles.height = height

    def render(self) -> str:
        return ""


class SealedParts(Column):
    """The finished parts of a StreamedMarkdown, in a box whose layout Textual can keep.

    The parts no longer change, so the height depends on the width alone; it
    is worked out again when the width changes, a part is added, or something
    inside asks for a new layout (a theme change: Textual counts those in
    `_layout_updates`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._height_cache: tuple[tuple[int, int, int], int] | None = None
        self._leaving: set[Widget] = set()
        """Parts whose replacement is already mounted while they await removal."""

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        key = (width, *layout_generation(self))
        if self._height_cache is None or self._height_cache[0] != key:
            self._height_cache = (key, super().get_content_height(container, viewport, width))
        return self._height_cache[1]

    @property
    def _has_relative_children_height(self) -> bool:
        # Textual would walk every block of every part each frame to learn this;
        # Markdown blocks are all auto or fixed height.
        return False

    @property
    def sources(self) -> list[str]:
        return [
            part.source
            for part in self.children
            if isinstance(part, MarkdownPart | FoldedPart) and part not in self._leaving
        ]

    async def fold_outside(self, keep: Region, now: float) -> None:
        """Fold the parts lying wholly outside `keep` (screen cells), unfold those inside it."""
        for part in list(self.children):
            try:
                region = part.region
            except NoWidget:
                return  # not laid out (hidden, e.g. in collapsed reasoning)
            near = region.overlaps(keep)
            if isinstance(part, FoldedPart) and near:
                await self._swap(part, MarkdownPart(part.source))
            elif (
                isinstance(part, MarkdownPart)
                and not near
                and region.height
                # A part parses and lays out its blocks after it mounts: fold only
                # one that has been on the screen long enough to have its height.
                and now - part.mounted_at >= FOLD_AFTER_S
                and part.children
            ):
                await self._swap(part, FoldedPart(part.source, region.height))

    async def _swap(self, old: Widget, new: Widget) -> None:
        # While both are children (between the mount and the removal) only `new` counts.
        self._leaving.add(old)
        try:
            with self.app.batch_update():
                try:
                    await self.mount(new, after=old)
                except MountError:
                    return  # `old` went away meanwhile (a new conversation, say)
                await old.remove()
        finally:
            self._leaving.discard(old)


class StreamedMarkdown(Column):
    """Finished (sealed) Markdown parts, then one live part that the stream writes to."""

    def __init__(self, *, classes: str | None = None, soft_limit: int = SEAL_AT) -> None:
        super().__init__(classes=classes)
        self.soft_limit = soft_limit
        self._sealed: list[str] = []
        self._live_text = ""
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield SealedParts()
        yield MarkdownPart(classes="live-part")

    @property
    def text(self) -> str:
        """What the parts hold, in order: what is on the screen once drawn."""
        return "".join([*self._sealed_box.sources, self._live.source])

    @property
    def _sealed_box(self) -> SealedParts:
        return self.query_one(SealedParts)

    @property
    def _live(self) -> MarkdownPart:
        return self.query_one(".live-part", MarkdownPart)

    async def write(self, fragment: str) -> None:
        """Append `fragment` to the live part, sealing it when it has grown long enough."""
        if not fragment:
            return
        written = len(self._live_text)  # what the live part's stream already has
        self._live_text += fragment
        while cut := seal_point(self._live_text, self.soft_limit):
            # The text up to the cut becomes a sealed part (parsed whole, once);
            # the live part starts afresh with the rest, in the same screen update.
            await self._stop_stream()
            finished, self._live_text = self._live_text[:cut], self._live_text[cut:]
            self._sealed.append(finished)
            with self.app.batch_update():
                await self._sealed_box.mount(MarkdownPart(finished))
                await self._live.update("")
            written = 0
        await self._write_live(self._live_text[written:])

    async def _write_live(self, text: str) -> None:
        if not text:
            return
        if self._stream is None:
            self._stream = Markdown.get_stream(self._live)
        await self._stream.write(text)

    async def _stop_stream(self) -> None:
        """Stop the live part's stream; what it had not drawn yet does not matter.

        Callers render the text whole afterwards (a sealed part is parsed from
        its text, `finish` updates the tail). `MarkdownStream.stop` cancels the
        stream's task, and awaiting a task cancelled before its first step
        raises CancelledError here, though no one cancelled us (seen when Esc
        lands just after a seal): only a new cancel request of ours re-raises.
        """
        stream, self._stream = self._stream, None
        if stream is None:
            return
        ours = asyncio.current_task()
        requested = ours.cancelling() if ours is not None else 0
        try:
            await stream.stop()
        except asyncio.CancelledError:
            if ours is None or ours.cancelling() > requested:
                raise

    async def finish(self, text: str) -> None:
        """Show exactly `text`: stop streaming, render the live tail in full once, seal it.

        Sealed parts are kept when `text` begins with them (it does when the
        stream carried `text`); otherwise (a conversation reopened from disk)
        everything is laid out afresh, cut the same way. The tail becomes a
        sealed part too, so a finished reply can be folded away entirely.
        """
        await self._stop_stream()
        sealed = "".join(self._sealed)
        if not text.startswith(sealed):
            await self._sealed_box.remove_children()
            sealed = ""
            self._sealed = []
        tail_parts = [part for part in split_parts(text[len(sealed) :], self.soft_limit) if part]
        with self.app.batch_update():
            await self._live.update("")
            if tail_parts:
                await self._sealed_box.mount_all(MarkdownPart(part) for part in tail_parts)
        self._sealed += tail_parts
        self._live_text = ""


async def fold_offscreen(root: Widget, viewport: Region) -> None:
    """Fold sealed parts under `root` farther than one viewport height from `viewport`."""
    keep = viewport.grow((viewport.height, 0, viewport.height, 0))
    now = time.monotonic()
    for box in root.query(SealedParts):
        await box.fold_outside(keep, now)
