"""One line of tab names over a ContentSwitcher: the Server screen's Log, Chat, Telemetry.

Textual's TabbedContent builds a widget per tab, an animated underline and a
pane per tab; this is one line of text. The Server screen is the first frame a
user waits for, so its tabs cost a render of one line, not a dozen widgets.
"""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget


class TabStrip(Widget, can_focus=True):
    """Tab names; the active one stands out. Click a name, or focus the strip and use ← →."""

    DEFAULT_CSS = """
    TabStrip {
        height: 1;
        padding: 0 1;
        color: $foreground-muted;
    }
    TabStrip:focus {
        background: $boost;
    }
    """

    BINDINGS = [
        Binding("left", "step(-1)", "Previous tab", show=False),
        Binding("right", "step(1)", "Next tab", show=False),
    ]

    active: reactive[str] = reactive("")
    """The id of the tab shown."""
    hidden: reactive[frozenset[str]] = reactive(frozenset())
    """Tabs left out of the strip (the Telemetry tab while it sits beside the log)."""

    class Chosen(Message):
        """The user asked for a tab (a click, or ← → on the focused strip)."""

        def __init__(self, strip: TabStrip, tab: str) -> None:
            super().__init__()
            self.strip = strip
            self.tab = tab

        @property
        def control(self) -> TabStrip:
            return self.strip

    def __init__(self, tabs: list[tuple[str, str]], *, active: str, id: str | None = None) -> None:
        """`tabs`: (id, label) in order."""
        super().__init__(id=id)
        self.tabs = tabs
        self.set_reactive(TabStrip.active, active)

    @property
    def shown(self) -> list[str]:
        return [tab for tab, _ in self.tabs if tab not in self.hidden]

    def render(self) -> Content:
        parts = []
        for tab, label in self.tabs:
            if tab not in self.hidden:
                style = "bold reverse $accent" if tab == self.active else ""
                parts.append(Content.styled(f" {label} ", style))
        return Content(" ").join(parts)

    def tab_at(self, x: int) -> str | None:
        """The tab whose name covers column `x` of the content (as `render` lays it out)."""
        start = 0
        for tab, label in self.tabs:
            if tab in self.hidden:
                continue
            end = start + len(label) + 2
            if start <= x < end:
                return tab
            start = end + 1
        return None

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        tab = self.tab_at(offset.x) if offset is not None else None
        if tab is not None:
            self.post_message(self.Chosen(self, tab))

    def action_step(self, step: int) -> None:
        shown = self.shown
        if self.active in shown:
            self.post_message(
                self.Chosen(self, shown[(shown.index(self.active) + step) % len(shown)])
            )
