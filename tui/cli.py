"""The `qtui` command: no arguments opens the panel; subcommands run headless.

Headless commands import only `backend` (fast start, no terminal UI needed);
the Textual app is imported only when the panel is opened.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tui.commands.errors import CommandError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["CommandError", "build_parser", "main"]


def command_modules() -> list[ModuleType]:
    """Every headless command; each module has `register(subparsers)` and sets `handler`.

    Imported here, when a subcommand is asked for, so that opening the panel pays
    for none of them (nor for the backend modules they use).
    """
    from tui.commands import bench, chat, fit, mtp, quantize, serve, setup, top, verify

    return [bench, chat, fit, mtp, quantize, serve, setup, top, verify]


def _add_panel_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version", action="store_true", help="print qtui's version and the engine's, then exit"
    )
    parser.add_argument("--profile", help="serve profile to show (default: default_profile)")
    parser.add_argument(
        "--url",
        dest="watch_url",
        metavar="URL",
        help="watch a vLLM server qtui did not start (chat, telemetry, verify; no start/stop)",
    )
    parser.add_argument(
        "--api-key-env",
        dest="watch_api_key_env",
        metavar="NAME",
        help="environment variable holding the --url server's API key",
    )
    parser.add_argument("--serve-web", action="store_true", help="serve the panel to a browser")
    parser.add_argument("--port", type=int, default=8566, help="port for --serve-web")
    parser.add_argument(
        "--web-host", default="127.0.0.1", help="address for --serve-web (default loopback)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qtui",
        description="Terminal control panel for serving quantized LLMs with vLLM.",
    )
    _add_panel_options(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in command_modules():
        module.register(subparsers)
    return parser


def _panel_arguments(args_list: list[str]) -> argparse.Namespace | None:
    """The parsed options when the command line only opens the panel, else None."""
    panel_only = argparse.ArgumentParser(prog="qtui", add_help=False)
    _add_panel_options(panel_only)
    try:
        args, rest = panel_only.parse_known_args(args_list)
    except SystemExit:
        return None  # a malformed option: the full parser says what is wrong
    return None if rest else args


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    panel_args = _panel_arguments(args_list)
    if panel_args is not None and panel_args.version:
        print(versions())
        return 0
    if panel_args is not None:
        return _open_panel(panel_args)
    from backend.config import ConfigError

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


def versions() -> str:
    """qtui's version and the configured engine's, read from its files (vLLM is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from backend.config import ConfigError, load_settings
    from backend.engine import EngineError, engine_facts, resolve_engine

    try:
        ours = version("qtui")
    except PackageNotFoundError:
        ours = "unknown (not installed)"
    try:
        engine = resolve_engine(load_settings().vllm)
    except (ConfigError, EngineError) as error:
        return f"qtui {ours}\nvLLM: none configured ({error})"
    facts = engine_facts(engine)
    return f"qtui {ours}\nvLLM {facts.version or 'version unknown'} ({' '.join(engine.command)})"


def _open_panel(args: argparse.Namespace) -> int:
    if args.serve_web:
        from tui.web import serve_web

        return serve_web(port=args.port, profile=args.profile, host=args.web_host)
    from tui.app import make_app

    endpoint = None
    if args.watch_url:
        from backend.endpoint import endpoint_from_url

        endpoint = endpoint_from_url(args.watch_url, args.watch_api_key_env)
    app = make_app(profile=args.profile, endpoint=endpoint)
    app.run()
    return app.return_code or 0
