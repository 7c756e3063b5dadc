"""The few Textual internals qtui relies on, in one place, each behind a function.

Textual does not promise these; `tests/test_textual_internals.py` checks each one
against the installed Textual (as it does `Widget._has_relative_children_height`,
which the sealed-parts column overrides), so an upgrade that changes them fails there, by
name, instead of as a subtly wrong layout in the chat.
"""

from __future__ import annotations

from textual.widget import Widget
from textual.widgets.markdown import MarkdownStream

__all__ = ["MarkdownStream", "layout_generation"]


def layout_generation(widget: Widget) -> tuple[int, int]:
    """Counters that change whenever `widget` must be laid out again.

    `_layout_updates` counts `refresh(layout=True)` calls on the widget (a theme
    change, a child asking for a new layout); `_nodes._updates` counts children
    added, removed or moved. While neither moves, a column of sealed Markdown parts
    keeps its height for a given width, so it can be cached.
    """
    return widget._layout_updates, widget._nodes._updates
