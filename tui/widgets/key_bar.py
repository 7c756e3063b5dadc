"""The key bar: the screen's shown keys on one line, drawn by one widget.

Textual's Footer builds a widget per key and composes them a refresh or two
after the screen's first frame, which held qtui's first readable frame back by
about a tenth of a second. This bar draws the same line itself, in the first
frame: each shown binding of the focused chain as "key description", a
disabled one dimmed, the command palette's key on the right. A click runs the
key under the pointer, and the pointer's key shows its tooltip.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual import events
from textual.widget import Widget

PALETTE_RULE = "▏"


@dataclass(frozen=True)
class KeyHint:
    """One key as the bar shows it."""

    key: str
    """What a click presses (the binding's first key)."""
    shown: str
    """The key as displayed (`^p`, `?`)."""
    description: str
    enabled: bool
    tooltip: str


@dataclass(frozen=True)
class PlacedHint:
    hint: KeyHint
    start: int
    end: int


def place_hints(hints: list[KeyHint], palette: KeyHint | None, width: int) -> list[PlacedHint]:
    """Where each hint goes on a line `width` cells wide: left to right, the palette
    key against the right edge; a hint that does not fit whole is left out."""
    placed: list[PlacedHint] = []
    palette_cells = len(PALETTE_RULE) + hint_width(palette, lead=False) if palette else 0
    room = width - palette_cells
    column = 0
    for hint in hints:
        cells = hint_width(hint)
        # Its closing space may fall under the palette's rule.
        if column + cells - 1 > room:
            break
        placed.append(PlacedHint(hint, column, column + cells))
        column += cells
    if palette is not None and palette_cells <= width:
        start = width - hint_width(palette, lead=False)
        placed.append(PlacedHint(palette, start, width))
    return placed


def hint_width(hint: KeyHint, *, lead: bool = True) -> int:
    key_cells, description_cells = hint_cells(hint, lead=lead)
    return len(key_cells) + len(description_cells)


def hint_cells(hint: KeyHint, *, lead: bool = True) -> tuple[str, str]:
    """The key's cells and the description's, as Textual's Footer pads them (the
    palette's key, after its rule, without the leading space)."""
    key_cells = f" {hint.shown} " if lead else f"{hint.shown} "
    return key_cells, f"{hint.description} " if hint.description else ""


class KeyBar(Widget):
    """The shown keys of the screen's focused chain, on one line at the bottom."""

    ALLOW_SELECT = False
    COMPONENT_CLASSES = {"key-bar--key", "key-bar--description", "key-bar--hover", "key-bar--rule"}
    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
        .key-bar--key {
            color: $footer-key-foreground;
            background: $footer-key-background;
            text-style: bold;
        }
        .key-bar--description {
            color: $footer-description-foreground;
            background: $footer-description-background;
        }
        .key-bar--hover {
            background: $block-hover-background;
        }
        .key-bar--rule {
            color: $foreground 20%;
        }
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._placed: list[PlacedHint] = []
        self._hovered: KeyHint | None = None

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, _screen: object) -> None:
        self.refresh()

    def hints(self) -> tuple[list[KeyHint], KeyHint | None]:
        """The shown bindings, one per action (the first, as the Footer does), and
        the command palette's key (None when the palette is off)."""
        active = self.screen.active_bindings
        hints: list[KeyHint] = []
        actions: set[str] = set()
        palette_key = self.app.COMMAND_PALETTE_BINDING
        for key, (_node, binding, enabled, tooltip) in active.items():
            if not binding.show or binding.action in actions or key == palette_key:
                continue
            actions.add(binding.action)
            shown = self.app.get_key_display(binding)
            hints.append(KeyHint(key, shown, binding.description, enabled, tooltip))
        palette: KeyHint | None = None
        if self.app.ENABLE_COMMAND_PALETTE and palette_key in active:
            _node, binding, enabled, tooltip = active[palette_key]
            palette = KeyHint(
                palette_key,
                self.app.get_key_display(binding),
                binding.description,
                enabled,
                binding.tooltip or binding.description,
            )
        return hints, palette

    def render(self) -> Text:
        hints, palette = self.hints()
        width = self.size.width
        self._placed = place_hints(hints, palette, width)
        key_style = self.get_component_rich_style("key-bar--key")
        description_style = self.get_component_rich_style("key-bar--description")
        hover_style = self.get_component_rich_style("key-bar--hover", partial=True)
        rule_style = self.get_component_rich_style("key-bar--rule")
        line = Text(no_wrap=True, overflow="crop", end="")
        for place in self._placed:
            if place.hint is palette:
                overlap = len(line) - (place.start - len(PALETTE_RULE))
                if overlap > 0:  # the last hint's closing space, under the rule
                    line.right_crop(overlap)
                line.append(" " * (place.start - len(PALETTE_RULE) - len(line)))
                line.append(PALETTE_RULE, rule_style)
            key_cells, description_cells = hint_cells(place.hint, lead=place.hint is not palette)
            extra = hover_style if place.hint == self._hovered else Style()
            if not place.hint.enabled:
                extra += Style(dim=True)
            line.append(key_cells, key_style + extra)
            line.append(description_cells, description_style + extra)
        return line

    def hint_at(self, x: int) -> KeyHint | None:
        for place in self._placed:
            if place.start <= x < place.end:
                return place.hint
        return None

    def on_click(self, event: events.Click) -> None:
        hint = self.hint_at(event.x)
        if hint is None:
            return
        if hint.enabled:
            self.app.simulate_key(hint.key)
        else:
            self.app.bell()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        hint = self.hint_at(event.x)
        if hint != self._hovered:
            self._hovered = hint
            self.tooltip = hint.tooltip or hint.description if hint else None
            self.refresh()

    def on_leave(self) -> None:
        if self._hovered is not None:
            self._hovered = None
            self.tooltip = None
            self.refresh()
