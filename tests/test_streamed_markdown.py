"""StreamedMarkdown: where text may be cut, that cut text looks the same, folding far-off parts."""

from __future__ import annotations

import random
from typing import Any

from textual.app import App, ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Markdown

from tui.widgets.streamed_markdown import (
    FoldedPart,
    MarkdownPart,
    SealedParts,
    StreamedMarkdown,
    fenced_spans,
    fold_offscreen,
    seal_point,
    split_parts,
)

SAMPLE = """# Plan

Intro with **bold** and `code`.

- item one
- item two

- loose item after a blank line

Text after the list.

1. first
2. second

3. third, same list

Text after the numbers.

```python
def f():

    return 1
```

Text after the fence.

    indented code

    more indented code

Text after indented code.

> quoted

Text after the quote.

Setext heading
==============

Text after the heading.

| a | b |
|---|---|
| 1 | 2 |

Text after the table.

***

~~~
tilde fence

~~~

Final words.
"""


def test_no_cut_before_the_soft_limit_or_before_the_next_lines_are_known() -> None:
    text = "para one\n\npara two\n\npara three\n\n"
    assert seal_point(text, soft_limit=100) == 0
    assert seal_point(text, soft_limit=1) == len("para one\n\n")
    assert seal_point(text, soft_limit=12) == len("para one\n\npara two\n\n")
    assert seal_point("para one\n\n", soft_limit=1) == 0  # what follows is unknown
    assert seal_point("para one\n\n1. or a word", soft_limit=1) == 0
    assert seal_point("para one\n\nTitle\n", soft_limit=1) == 0  # "===" may follow
    assert seal_point("para one\n\nTitle\n==\n", soft_limit=1) == 0  # it did
    assert seal_point("para one\n\nno title\nat all", soft_limit=1) == len("para one\n\n")


def test_no_cut_inside_fences_nor_before_indents_list_items_or_top_margins() -> None:
    fenced = "intro\n\n```\ncode\n\nmore code\n```\n\nafter it\nand more"
    assert seal_point(fenced, soft_limit=1) == fenced.index("after")
    unclosed = "intro\n\n```py\ncode\n\nmore code\nand more"
    assert seal_point(unclosed, soft_limit=1) == 0
    assert fenced_spans(unclosed) == [(7, len(unclosed))]
    for start in ("    indented", "- a", "* a", "+ a", "2) b", "10. b", "# h", "> q", "~~~"):
        assert seal_point(f"para\n\n{start}\nnext line", soft_limit=1) == 0, start
    # A backtick line with backticks after it is inline code, not a fence.
    assert fenced_spans("```a`b```\n\ntext") == []


def test_parts_join_back_to_the_text_and_each_sealed_part_is_long_enough() -> None:
    rng = random.Random(4)
    pieces = ["word ", "\n\n", "\n", "```\n", "- item\n", "    code\n", "~~~\n", "1. x\n", "# h\n"]
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 120)))
        limit = rng.randint(1, 60)
        parts = split_parts(text, limit)
        assert "".join(parts) == text
        assert all(len(part) >= limit for part in parts[:-1])
        cut = 0
        for part in parts[:-1]:
            cut += len(part)
            assert not any(start < cut - 1 < end for start, end in fenced_spans(text))


class OneMarkdown(App[None]):
    def compose(self) -> ComposeResult:
        yield Markdown(SAMPLE)


class CutMarkdown(App[None]):
    def compose(self) -> ComposeResult:
        yield StreamedMarkdown(soft_limit=1)

    async def on_mount(self) -> None:
        await self.query_one(StreamedMarkdown).finish(SAMPLE)


async def screen_lines(app: App[Any]) -> list[str]:
    async with app.run_test(size=(60, 100)) as pilot:
        await pilot.pause()
        await pilot.pause()
        return [strip.text.rstrip() for strip in app.screen._compositor.render_strips()]


async def test_text_cut_into_parts_looks_the_same_as_one_markdown() -> None:
    cut_app = CutMarkdown()
    cut = await screen_lines(cut_app)
    assert len(split_parts(SAMPLE, 1)) >= 6, "the sample is cut in many places"
    assert cut == await screen_lines(OneMarkdown())
    shown = "\n".join(cut)
    assert "def f():" in shown and "Final words." in shown and not cut[-1].strip()


class StreamHost(App[None]):
    CSS = "VerticalScroll { height: 1fr; }"

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield StreamedMarkdown(soft_limit=200)


def paragraphs(count: int) -> str:
    return "".join(f"Paragraph {n} " + "word " * 40 + "\n\n" for n in range(count))


async def test_streamed_text_is_sealed_shown_whole_and_far_parts_fold() -> None:
    text = paragraphs(60) + "The end."
    app = StreamHost()
    async with app.run_test(size=(60, 20)) as pilot:
        streamed = app.query_one(StreamedMarkdown)
        for start in range(0, len(text), 97):  # fragments that do not align with paragraphs
            await streamed.write(text[start : start + 97])
        await pilot.pause()
        box = app.query_one(SealedParts)
        assert len(box.children) > 20, "parts were sealed while streaming"
        assert streamed.text == text
        await streamed.finish(text)
        assert streamed.text == text
        log = app.query_one(VerticalScroll)
        log.scroll_end(animate=False)
        await pilot.pause(0.6)  # folding waits until parts have been laid out
        await fold_offscreen(log, log.content_region)
        await pilot.pause()
        folded = list(box.query_children(FoldedPart))
        assert len(folded) > 10, "parts far above the viewport are folded"
        assert isinstance(box.children[-1], MarkdownPart), "the visible end is not"
        assert streamed.text == text, "folded parts keep their text"
        height = log.virtual_size.height
        log.scroll_home(animate=False)
        await pilot.pause()
        await fold_offscreen(log, log.content_region)
        await pilot.pause()
        assert isinstance(box.children[0], MarkdownPart), "scrolling back unfolds"
        assert log.virtual_size.height == height, "folding keeps the layout's height"
        top_lines = [strip.text for strip in app.screen._compositor.render_strips()]
        assert any("Paragraph 0 word" in line for line in top_lines)


async def test_a_finished_text_that_does_not_extend_the_sealed_parts_is_laid_out_afresh() -> None:
    app = StreamHost()
    async with app.run_test(size=(60, 20)) as pilot:
        streamed = app.query_one(StreamedMarkdown)
        await streamed.write(paragraphs(10))
        await streamed.finish("Something else entirely.\n\n" + paragraphs(3))
        await pilot.pause()
        assert streamed.text == "Something else entirely.\n\n" + paragraphs(3)


async def test_finish_right_after_a_stream_started_does_not_cancel_the_caller() -> None:
    # Esc just after a seal: the live part's MarkdownStream is stopped before its
    # task first ran, and MarkdownStream.stop() then raises CancelledError. Seen
    # as a pane stuck "streaming" that Esc could not stop any more.
    app = StreamHost()
    async with app.run_test(size=(60, 20)) as pilot:
        streamed = app.query_one(StreamedMarkdown)
        streamed._stream = Markdown.get_stream(streamed._live)  # no await: not started
        await streamed.finish("all of it\n")
        await pilot.pause()
        assert streamed.text == "all of it\n"
