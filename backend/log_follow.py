"""Following a log file as it grows: the server's log, a quantize job's log.

`LogFollower` reads from where it left off and hands back only complete lines
(a line still being written waits for its end), decoded and cleaned of colour
codes. It starts over, and says so, when the file shrinks (truncated) or is
another file under the same path (replaced), or when it is pointed at another
path. It can begin with the last N lines, as `tail -n N -F` does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

from backend.vllm_log import clean_line, tail_lines

READ_LIMIT = 1 << 20
"""Bytes read per call at most: a huge backlog is caught up over a few calls."""
_SCAN_CHUNK = 65536
_NEWLINE = re.compile(rb"\n")
_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")


class LogFollower:
    """Complete new lines of one file, each call to `read_new` returning what was added.

    `start_lines`: None reads the file from its beginning; N begins with its last N
    complete lines (0: only what is written from now on).
    `cr_ends_line`: a bare carriage return ends a line too, so each tqdm redraw is a
    line; otherwise a line is up to its newline and shows its last redraw.
    After each call `started_over` says whether the lines begin the file afresh (first
    sight of it, a new path, truncated, replaced): a view clears what it showed.
    """

    def __init__(
        self,
        path: Path | str,
        start_lines: int | None = None,
        *,
        cr_ends_line: bool = False,
        read_limit: int = READ_LIMIT,
    ) -> None:
        self._path = Path(path)
        self.start_lines = start_lines
        self.cr_ends_line = cr_ends_line
        self.read_limit = read_limit
        self.offset = 0
        """Bytes of the file consumed so far (complete lines and the pending part)."""
        self.started_over = False
        self._pending = b""
        self._identity: tuple[int, int] | None = None
        """(device, inode) of the file being read; None until it has been seen."""

    @property
    def path(self) -> Path:
        return self._path

    @path.setter
    def path(self, value: Path | str) -> None:
        """Follow another file: the next read begins it as a first sight (`start_lines`)."""
        if Path(value) != self._path:
            self._path = Path(value)
            self._identity = None
            self.offset, self._pending = 0, b""

    def read_new(self) -> list[str]:
        """The complete lines added since the last call ([] while the file is missing)."""
        self.started_over = False
        try:
            with open(self._path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                identity = (stat.st_dev, stat.st_ino)
                lines: list[str] = []
                if self._identity is None:
                    lines = self._begin(handle, stat.st_size)
                elif identity != self._identity or stat.st_size < self.offset:
                    # Replaced or truncated: all it holds now is new.
                    self.offset, self._pending = 0, b""
                    self.started_over = True
                self._identity = identity
                return lines + self._read(handle)
        except OSError:
            return []

    def _begin(self, handle: BinaryIO, size: int) -> list[str]:
        self.started_over = True
        self._pending = b""
        if self.start_lines is None:
            self.offset = 0
            return []
        # Start after the last complete line: a partial one is read as new data.
        self.offset = self._last_line_end(handle, size)
        if self.start_lines <= 0 or self.offset == 0:
            return []
        return tail_lines(self._path, self.start_lines, end=self.offset)

    def _last_line_end(self, handle: BinaryIO, size: int) -> int:
        """The offset just past the last line end before `size` (0 if there is none)."""
        limit = size
        if self.cr_ends_line and size:
            handle.seek(size - 1)
            if handle.read(1) == b"\r":
                limit -= 1  # a newline may still follow it: \r\n is one line end
        pattern = _ANY_LINE_END if self.cr_ends_line else _NEWLINE
        end = limit
        while end > 0:
            start = max(0, end - _SCAN_CHUNK)
            handle.seek(start)
            chunk = handle.read(end - start)
            found = [match.end() for match in pattern.finditer(chunk)]
            if found:
                return start + found[-1]
            end = start
        return 0

    def _read(self, handle: BinaryIO) -> list[str]:
        handle.seek(self.offset)
        data = handle.read(self.read_limit)
        if not data:
            return []
        self.offset += len(data)
        buffer, held = self._pending + data, b""
        if self.cr_ends_line and buffer.endswith(b"\r"):
            buffer, held = buffer[:-1], b"\r"  # wait: it may be the first half of \r\n
        pattern = _ANY_LINE_END if self.cr_ends_line else _NEWLINE
        *complete, rest = pattern.split(buffer)
        self._pending = rest + held
        return [clean_line(raw.decode("utf-8", "replace")) for raw in complete]
