"""The `qtui` command: no arguments opens the panel; subcommands run headless.

Headless commands import only `backend` (fast start, no terminal UI needed);
the Textual app is imported only when the panel is opened.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from backend.config import ConfigError

# Each module defines `register(subparsers)` and sets `handler` on its parsers.
COMMAND_MODULES = (
    "tui.commands.bench",
    "tui.commands.chat",
    "tui.commands.fit",
    "tui.commands.mtp",
    "tui.commands.quantize",
    "tui.commands.serve",
    "tui.commands.setup",
    "tui.commands.top",
    "tui.commands.verify",
)


class CommandError(Exception):
    """A headless command failed; the message is the one line the user sees."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qtui",
        description="Terminal control panel for serving quantized LLMs with vLLM.",
    )
    parser.add_argument("--profile", help="serve profile to show (default: default_profile)")
    parser.add_argument("--serve-web", action="store_true", help="serve the panel to a browser")
    parser.add_argument("--port", type=int, default=8566, help="port for --serve-web")
    parser.add_argument(
        "--web-host", default="127.0.0.1", help="address for --serve-web (default loopback)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Everything after a bare `--` goes to vLLM unchanged.
    passthrough: list[str] = []
    if "--" in args_list:
        cut = args_list.index("--")
        args_list, passthrough = args_list[:cut], args_list[cut + 1 :]
    args = parser.parse_args(args_list)
    args.passthrough = passthrough
    handler = getattr(args, "handler", None)
    try:
        if handler is None:
            return _open_panel(args)
        return int(handler(args) or 0)
    except CommandError as error:
        print(f"qtui: {error}", file=sys.stderr)
        return error.exit_code
    except ConfigError as error:
        print(f"qtui: config: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qtui: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        # A path that cannot be read or written (permissions, full disk, no such
        # folder): the filesystem's own words are the clearest reason.
        where = f" ({error.filename})" if error.filename else ""
        print(f"qtui: {error.strerror or error}{where}", file=sys.stderr)
        return 1


def _open_panel(args: argparse.Namespace) -> int:
    if args.serve_web:
        from tui.web import serve_web

        return serve_web(port=args.port, profile=args.profile, host=args.web_host)
    from tui.app import make_app

    app = make_app(profile=args.profile)
    app.run()
    return app.return_code or 0
