"""The live tail of the server log, with levels picked out."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from backend.vllm_log import level_of

LEVEL_STYLE = {
    "ERROR": "bold red",
    "CRITICAL": "bold red",
    "WARNING": "yellow",
    "DEBUG": "dim",
}


class ServerLogView(RichLog):
    """Appends cleaned log lines; keeps the last few thousand."""

    def __init__(self, *, max_lines: int = 3000, id: str | None = None) -> None:
        super().__init__(max_lines=max_lines, wrap=False, markup=False, highlight=False, id=id)
        self.border_title = "server log"

    def add_lines(self, lines: list[str], reset: bool = False) -> None:
        if reset:
            self.clear()
        for line in lines:
            style = LEVEL_STYLE.get(level_of(line) or "", "")
            if line.startswith("# qtui:"):
                style = "bold"
            self.write(Text(line, style=style))
