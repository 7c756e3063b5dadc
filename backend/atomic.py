"""Files that are either the old version or the new one, never half of each.

Every state qtui keeps (the server record, job records, the config, the speed
ledger, bench results) goes through `write_atomic` (or `replacing`, for
a file written in pieces): a temp file beside the target, fsync, rename,
fsync of the directory. A crash, a full disk or a
killed panel leaves the previous file whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Write and fsync `path` in place (for temps that are renamed later)."""
    with Path(path).open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temp file beside `path` to write (and fsync); it replaces `path` if the block ends well.

    The temp is `.NAME.XXXXXXXX.tmp`; on an error it is removed and `path` is untouched.
    """
    path = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(temp)
        os.replace(temp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` all at once, durably."""
    payload = data.encode() if isinstance(data, str) else data
    with replacing(path) as temp:
        write_bytes_durably(temp, payload)


def write_json_atomic(path: Path, value: Any, indent: int | None = 2) -> None:
    write_atomic(path, json.dumps(value, indent=indent))
