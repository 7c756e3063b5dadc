"""The Textual internals qtui relies on (tui/textual_internals.py) still behave as it assumes.

If one of these fails after a Textual upgrade, the chat's sealed-Markdown height
cache (tui/widgets/streamed_markdown.py) must be revisited before shipping.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static

from tui.textual_internals import MarkdownStream, layout_generation


class Column(App[None]):
    def compose(self) -> ComposeResult:
        with Vertical(id="column"):
            yield Static("first")


async def test_layout_generation_moves_on_a_new_child_and_on_a_layout_refresh() -> None:
    app = Column()
    async with app.run_test() as pilot:
        column = app.query_one("#column", Vertical)
        before = layout_generation(column)
        await column.mount(Static("second"))
        await pilot.pause()
        after_mount = layout_generation(column)
        assert after_mount[1] != before[1], "_nodes._updates did not count a mounted child"
        column.refresh(layout=True)
        assert layout_generation(column)[0] != after_mount[0], "_layout_updates did not move"
        await pilot.pause()
        settled = layout_generation(column)
        await pilot.pause()
        assert layout_generation(column) == settled, "the counters move with nothing changing"


async def test_markdown_stream_is_what_get_stream_returns() -> None:
    class Doc(App[None]):
        def compose(self) -> ComposeResult:
            yield Markdown("")

    app = Doc()
    async with app.run_test() as pilot:
        stream = Markdown.get_stream(app.query_one(Markdown))
        assert isinstance(stream, MarkdownStream)
        await stream.write("# streamed")
        await stream.stop()
        await pilot.pause()
        assert "streamed" in app.query_one(Markdown).source


def test_the_overridden_private_property_still_exists() -> None:
    # streamed_markdown.SealedParts overrides it to skip a walk over every block.
    from textual.widget import Widget

    assert isinstance(Widget.__dict__.get("_has_relative_children_height"), property)
