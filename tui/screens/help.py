"""Every key qtui answers to, as the user's keymap has them now."""

from __future__ import annotations

from collections.abc import Iterable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

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


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss", "Close", id="close_help",
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
            table: DataTable[str] = DataTable(cursor_type="row", zebra_stripes=True)
            table.add_columns("where", "key", "what", "id")
            table.add_rows(self.rows)
            yield table
            # A narrow terminal cuts the table's columns; the row under the cursor is
            # also written out in full here, wrapped.
            yield Static("", id="help-detail", markup=False)

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()

    @on(DataTable.RowHighlighted)
    def _show_row(self, event: DataTable.RowHighlighted) -> None:
        where, keys, what, binding_id = self.rows[event.cursor_row]
        self.query_one("#help-detail", Static).update(
            f"{keys} ({where}): {what}  [id {binding_id}]"
        )
