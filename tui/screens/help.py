"""Every key qtui answers to, as the user's keymap has them now."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Label, Static

KEY_NAMES = {"question_mark": "?", "slash": "/", "escape": "esc"}


def pretty_keys(keys: str) -> str:
    return " ".join(KEY_NAMES.get(key.strip(), key.strip()) for key in keys.split(","))


def binding_rows(
    sources: Iterable[tuple[str, Iterable[BindingType]]], keymap: dict[str, str]
) -> list[tuple[str, str, str, str]]:
    """(where, keys, what, id) for every binding with an id, keymap applied."""
    rows = []
    for where, bindings in sources:
        for binding in bindings:
            if not isinstance(binding, Binding) or not binding.id:
                continue
            keys = pretty_keys(keymap.get(binding.id, binding.key))
            rows.append((where, keys, binding.tooltip or binding.description, binding.id))
    return rows


KEYS_WIDTH = 12
"""Columns of the key column; a row's words wrap under its own column, not under it."""


def key_list(rows: list[tuple[str, str, str, str]], width: int) -> Content:
    """The rows as text `width` columns wide: a heading per place, then `keys  what · id`.

    Wrapped text instead of a table: a narrow terminal loses no words, and the
    list opens in a frame (a DataTable of sixty rows took tens of milliseconds).
    """
    indent = " " * (KEYS_WIDTH + 3)
    lines: list[Content] = []
    shown_where = None
    for where, keys, what, binding_id in rows:
        if where != shown_where:
            shown_where = where
            lines.append(Content.styled(where, "bold $accent"))
        # No-break spaces keep "· id" in one piece at the end of the row.
        tail = f"\N{NO-BREAK SPACE}·\N{NO-BREAK SPACE}{binding_id}"
        wrapped = textwrap.wrap(what + tail, max(20, width - len(indent)))
        for number, words in enumerate(wrapped):
            head = f"  {keys:<{KEYS_WIDTH}} " if number == 0 else indent
            line = Content.assemble((head, "bold") if number == 0 else head, words)
            if number == len(wrapped) - 1:
                line = line.stylize("$text-muted", len(line) - len(tail), len(line))
            lines.append(line)
    return Content("\n").join(lines)


class KeyList(Static):
    """The key rows, re-wrapped to the width they get."""

    def __init__(self, rows: list[tuple[str, str, str, str]], width: int) -> None:
        super().__init__(key_list(rows, width), id="help-keys")
        self.rows = rows
        self._wrapped_at = width

    def on_resize(self) -> None:
        width = self.content_region.width
        if width and width != self._wrapped_at:
            self._wrapped_at = width
            self.update(key_list(self.rows, width))


class HelpScreen(Screen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark,f1", "dismiss", "Close", id="close_help",
                tooltip="Close the key list"),
    ]  # fmt: skip

    def __init__(self, rows: list[tuple[str, str, str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Label(
                "Keys: remap any by its id in the config's \\[keymap] table. ctrl+p: palette",
                markup=True,
            )
            with VerticalScroll(id="help-scroll"):
                # A guess at the width (the box, less borders, padding and a scroll
                # bar) so the first frame is already wrapped right.
                yield KeyList(self.rows, min(110, self.app.size.width) - 6)

    def on_mount(self) -> None:
        self.query_one("#help-scroll").focus()
