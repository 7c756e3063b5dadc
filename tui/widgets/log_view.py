"""The live tail of the server log: levels picked out, searchable, doctor pinned above."""

from __future__ import annotations

from collections.abc import Callable

from rich.highlighter import Highlighter
from rich.text import Text
from textual.widgets import Log, Static

from backend.vllm_log import Diagnosis, diagnose, level_of, more_specific

# Log levels -> the theme variable that colours them (looked up when a line is
# drawn, so the light and dark themes each use their own error and warning).
LEVEL_COLOUR = {"ERROR": "error", "CRITICAL": "error", "WARNING": "warning"}


def level_style(line: str, theme_colour: Callable[[str], str]) -> str:
    """The style of one log line: qtui's own notes bold, errors and warnings coloured."""
    if line.startswith("# qtui:"):
        return "bold"
    level = level_of(line) or ""
    if level == "DEBUG":
        return "dim"
    variable = LEVEL_COLOUR.get(level)
    if variable is None:
        return ""
    colour = theme_colour(variable)
    return f"bold {colour}" if level in ("ERROR", "CRITICAL") else colour


class LevelHighlighter(Highlighter):
    """Colours a whole line by its log level, as the Log widget draws it."""

    def __init__(self, theme_colour: Callable[[str], str]) -> None:
        self._theme_colour = theme_colour

    def highlight(self, text: Text) -> None:
        style = level_style(text.plain, self._theme_colour)
        if style:
            text.stylize(style)


class ServerLogView(Log):
    """Appends cleaned log lines (the last few thousand), coloured by level; searchable.

    Textual's Log keeps plain lines and draws only those on screen, so a burst of
    log lines costs a list append, not a rendered strip per line.
    """

    def __init__(self, *, max_lines: int = 3000, id: str | None = None) -> None:
        super().__init__(highlight=True, max_lines=max_lines, id=id)
        self.border_title = "server log"
        self.highlighter = LevelHighlighter(
            lambda variable: self.app.theme_variables.get(variable, "")
        )
        self._search_from = 0

    def add_lines(self, lines: list[str], reset: bool = False) -> None:
        if reset:
            self.clear()
            self._search_from = 0
        if lines:
            self.write_lines(lines)

    def find_next(self, needle: str) -> tuple[int, int] | None:
        """Scroll to the next line containing `needle` (case-insensitive).

        Returns (match number, total matches), or None when nothing matches.
        """
        needle = needle.lower()
        hits = [index for index, line in enumerate(self.lines) if needle in line.lower()]
        if not needle or not hits:
            return None
        following = [index for index in hits if index >= self._search_from]
        target = following[0] if following else hits[0]
        self._search_from = target + 1
        self.auto_scroll = False
        self.scroll_to(y=target, animate=False)
        return hits.index(target) + 1, len(hits)


class LogDoctor(Static):
    """One pinned line explaining the known fatal pattern in the log, with its fix."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.diagnosis: Diagnosis | None = None

    def server_ready(self) -> None:
        """The server answered /health: a "fatal" line it survived was not (e.g. a missing
        optional module caught while warming up); keep only what spoils a running server."""
        if self.diagnosis is not None and self.diagnosis.stops_server:
            self._show(None)

    def examine(self, new_lines: list[str], reset: bool = False) -> None:
        """Look at lines as they arrive: only the new ones are scanned, never the whole tail."""
        previous = None if reset else self.diagnosis
        found = more_specific(previous, diagnose(new_lines))
        if found != self.diagnosis:
            self._show(found)

    def _show(self, found: Diagnosis | None) -> None:
        self.diagnosis = found
        self.set_class(found is not None, "shown")
        self.update(f"⚠ {found.advice}" if found else "")
        self.tooltip = found.line if found else None
