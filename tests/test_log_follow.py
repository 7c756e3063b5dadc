"""LogFollower on real files: written in pieces, truncated, replaced, another path."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from backend import paths
from backend.atomic import write_json_atomic
from backend.log_follow import LogFollower
from backend.server_state import ServerRecord


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def test_lines_written_in_pieces_come_out_whole(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_bytes(b"")
    follower = LogFollower(log)
    assert follower.read_new() == [] and follower.started_over
    append(log, b"INFO first li")
    assert follower.read_new() == [] and not follower.started_over  # the line is not done
    append(log, b"ne\nsecond\nthi")
    assert follower.read_new() == ["INFO first line", "second"]
    append(log, "rd: caf\u00e9"[:-1].encode() + "\u00e9".encode()[:1])  # half of a UTF-8 é
    assert follower.read_new() == []
    append(log, "\u00e9".encode()[1:] + b"\n\x1b[32mgreen\x1b[0m\n\n")
    assert follower.read_new() == ["third: caf\u00e9", "green", ""]
    assert follower.read_new() == []


def test_starts_from_the_last_lines_and_leaves_a_partial_one_waiting(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_bytes(b"".join(b"line %d\n" % n for n in range(1, 101)) + b"half")
    follower = LogFollower(log, start_lines=3)
    assert follower.read_new() == ["line 98", "line 99", "line 100"]
    assert follower.started_over
    append(log, b" done\n")
    assert follower.read_new() == ["half done"]
    assert not follower.started_over
    # 0: only what is written from now on.
    later = LogFollower(log, start_lines=0)
    assert later.read_new() == []
    append(log, b"new\n")
    assert later.read_new() == ["new"] and follower.read_new() == ["new"]


def test_a_truncated_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_bytes(b"old one\nold two\nold three\n")
    follower = LogFollower(log, start_lines=10)
    assert follower.read_new() == ["old one", "old two", "old three"]
    with log.open("r+b") as handle:  # same file, cut short: `> log`, logrotate copytruncate
        handle.truncate(0)
    append(log, b"fresh\n")
    assert follower.read_new() == ["fresh"]
    assert follower.started_over
    append(log, b"more\n")
    assert follower.read_new() == ["more"] and not follower.started_over


def test_a_replaced_file_is_read_from_its_start_even_when_longer(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_bytes(b"a\n")
    follower = LogFollower(log, start_lines=5)
    assert follower.read_new() == ["a"]
    replacement = tmp_path / "new.log"
    replacement.write_bytes(b"new 1\nnew 2\nnew 3\n")
    inode = os.stat(log).st_ino
    os.replace(replacement, log)  # a larger file: the size alone would not tell
    assert os.stat(log).st_ino != inode
    assert follower.read_new() == ["new 1", "new 2", "new 3"]
    assert follower.started_over
    # Gone for a while (rotated away), then back: nothing in between, then its lines.
    log.unlink()
    assert follower.read_new() == [] and not follower.started_over
    log.write_bytes(b"back\n")
    assert follower.read_new() == ["back"] and follower.started_over


def test_another_path_starts_over_with_its_last_lines(tmp_path: Path) -> None:
    first, second = tmp_path / "server-1.log", tmp_path / "server-2.log"
    first.write_bytes(b"one\n")
    second.write_bytes(b"x\ny\nz\n")
    follower = LogFollower(first, start_lines=2)
    assert follower.read_new() == ["one"]
    follower.path = second
    assert follower.path == second
    assert follower.read_new() == ["y", "z"] and follower.started_over
    follower.path = second  # the same path: nothing starts over
    assert follower.read_new() == [] and not follower.started_over


def test_a_missing_file_is_followed_once_it_appears(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    follower = LogFollower(log, start_lines=50)
    assert follower.read_new() == [] and not follower.started_over
    log.write_bytes(b"hello\npartial")
    assert follower.read_new() == ["hello"] and follower.started_over
    append(log, b"\n")
    assert follower.read_new() == ["partial"]


def test_carriage_returns_end_lines_for_tqdm(tmp_path: Path) -> None:
    """A quantize log: tqdm redraws with \\r; \\r\\n split over two reads is one line end."""
    log = tmp_path / "job.log"
    log.write_bytes(b"start\nQuantizing a:  0%|\rQuantizing a: 50%|")
    follower = LogFollower(log, start_lines=100, cr_ends_line=True)
    assert follower.read_new() == ["start", "Quantizing a:  0%|"]
    append(log, b"\r\x1b[32mdone\x1b[0m\r")
    assert follower.read_new() == ["Quantizing a: 50%|"]
    append(log, b"\nnext\n")
    assert follower.read_new() == ["done", "next"]
    # Without cr_ends_line a line is up to its newline and shows its last redraw.
    plain = LogFollower(log)
    assert plain.read_new() == ["start", "done", "next"]


def test_a_backlog_larger_than_one_read_arrives_over_several_calls(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"".join(b"%05d\n" % n for n in range(1000)))
    follower = LogFollower(log, read_limit=1024)
    seen: list[str] = []
    while batch := follower.read_new():
        seen += batch
    assert seen == [f"{n:05d}" for n in range(1000)]


def test_serve_logs_follow_prints_new_lines_then_the_next_servers_log() -> None:
    """`qtui serve logs -f`: the last lines, what is appended, and after a restart the new log."""
    state = paths.state_dir()
    first, second = state / "server-1.log", state / "server-2.log"
    first.write_bytes(b"old\nlast one\nlast two\n")
    record = ServerRecord(
        pid=os.getpid(), pgid=os.getpgid(0), create_time=0.0, host="127.0.0.1", port=1,
        url="http://127.0.0.1:1", profile_name="p", profile={}, spec="off",
        kv_cache_dtype="auto", started_at=0.0, log_path=str(first), command="vllm serve",
    )  # fmt: skip
    write_json_atomic(state / "server.json", asdict(record))
    cli = subprocess.Popen(
        [sys.executable, "-m", "tui", "serve", "logs", "-f", "-n", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out = _Stdout(cli)
    try:
        assert out.next_lines(2) == ["last one", "last two"]
        append(first, b"appended\x1b[0m\npart")
        assert out.next_lines(1) == ["appended"]
        second.write_bytes(b"new 1\nnew 2\nnew 3\n")
        write_json_atomic(state / "server.json", asdict(record) | {"log_path": str(second)})
        assert out.next_lines(3) == ["new 1", "new 2", "new 3"]
    finally:
        cli.send_signal(signal.SIGINT)
        # A deadline, not a speed figure: on a loaded machine the exit took over 20 s.
        _, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    assert f"qtui: now {second}" in err.decode()


class _Stdout:
    """A command's stdout read line by line with a deadline (raw reads: select sees all)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.fd = process.stdout.fileno()
        self.pending = b""

    def next_lines(self, count: int, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while self.pending.count(b"\n") < count:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no line within {timeout} s; got {self.pending!r}"
            chunk = os.read(self.fd, 65536)
            assert chunk, f"the command ended; got {self.pending!r}"
            self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n", count)
        return [line.decode() for line in lines]
