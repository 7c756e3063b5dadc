"""The reference for bench/bench_panel.py: a bare Textual app (Header + Static + Footer).

`?` shows the same words qtui's key list opens with, so the key-latency
figure has the same thing to wait for in both apps; `q` quits, as in qtui.
"""

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Static

HELP_MARKER = "remap any by its id"


class BareApp(App[None]):
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "show_keys", "Keys"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("a bare Textual app", id="body")
        yield Footer()

    def action_show_keys(self) -> None:
        self.query_one("#body", Static).update(f"Keys: {HELP_MARKER}")


if __name__ == "__main__":
    BareApp().run()
