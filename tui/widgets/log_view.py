"""The live tail of the server log: levels picked out, searchable, doctor pinned above."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.widgets import RichLog, Static

from backend.vllm_log import Diagnosis, diagnose, level_of, more_specific

# Log levels -> the theme variable that colours them (looked up when a line is
# written, so the light and dark themes each use their own error and warning).
LEVEL_COLOUR = {"ERROR": "error", "CRITICAL": "error", "WARNING": "warning"}


class ServerLogView(RichLog):
    """Appends cleaned log lines; keeps the last few thousand for display and search."""

    def __init__(self, *, max_lines: int = 3000, id: str | None = None) -> None:
        super().__init__(max_lines=max_lines, wrap=False, markup=False, highlight=False, id=id)
        self.border_title = "server log"
        self.kept: deque[str] = deque(maxlen=max_lines)
        self._search_from = 0

    def add_lines(self, lines: list[str], reset: bool = False) -> None:
        if reset:
            self.clear()
            self.kept.clear()
            self._search_from = 0
        for line in lines:
            self.kept.append(line)
            style = self._style_of(line)
            self.write(Text(line, style=style))

    def _style_of(self, line: str) -> str:
        if line.startswith("# qtui:"):
            return "bold"
        level = level_of(line) or ""
        if level == "DEBUG":
            return "dim"
        variable = LEVEL_COLOUR.get(level)
        if variable is None:
            return ""
        colour = self.app.theme_variables.get(variable, "")
        return f"bold {colour}" if level in ("ERROR", "CRITICAL") else colour

    def find_next(self, needle: str) -> tuple[int, int] | None:
        """Scroll to the next line containing `needle` (case-insensitive).

        Returns (match number, total matches), or None when nothing matches.
        """
        needle = needle.lower()
        hits = [index for index, line in enumerate(self.kept) if needle in line.lower()]
        if not needle or not hits:
            return None
        following = [index for index in hits if index >= self._search_from]
        target = following[0] if following else hits[0]
        self._search_from = target + 1
        # The view holds the same lines as `kept`, minus any it already dropped.
        offset = max(0, len(self.lines) - len(self.kept))
        self.auto_scroll = False
        self.scroll_to(y=target + offset, animate=False)
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
