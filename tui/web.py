"""`qtui --serve-web`: the same panel in a browser, through textual-serve.

Each browser tab runs its own `qtui` process; server ownership stays in the
backend's state file and lock, so several views never start two servers.
"""

from __future__ import annotations

import shlex
import sys


def web_command(profile: str | None) -> str:
    """The command textual-serve runs for each browser session."""
    parts = [sys.executable, "-m", "tui"]
    if profile:
        parts += ["--profile", profile]
    return shlex.join(parts)


def serve_web(port: int, profile: str | None, host: str = "127.0.0.1") -> int:
    from textual_serve.server import Server

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"qtui: warning: the panel is reachable from other machines on {host}:{port} "
            "and has no login of its own",
            file=sys.stderr,
        )
    print(f"qtui: panel at http://{host}:{port} (Ctrl-C stops the web view only)", file=sys.stderr)
    Server(web_command(profile), host=host, port=port, title="qtui").serve()
    return 0
