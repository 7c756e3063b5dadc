"""The chat's slash commands: a typed line in, what it asks for out.

`parse_command("/temp 0.3", settings)` gives `NewSettings(...)` with the next request's
settings, or a request for the pane (`SetSystem`, `SetModel`, `SetUrl`, `PaneAction`,
`ShowHelp`), or `Refused` with the error to show. No widget, no App: the chat pane
(tui/widgets/chat.py) applies the result. The one look outside is /image, which checks
the named file is there and is an image before it is attached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from backend.chat import ChatOptions, image_data_url


@dataclass(frozen=True)
class ChatSettings:
    """What the next request is sent with; None leaves the server's default."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    enable_thinking: bool | None = None
    ignore_eos: bool = False
    images: tuple[Path, ...] = ()
    """Images attached to the next message."""

    def options(self) -> ChatOptions:
        return ChatOptions(
            self.temperature, self.top_p, self.max_tokens, self.enable_thinking, self.ignore_eos
        )


def settings_line(settings: ChatSettings, model: str | None, system: str | None) -> str:
    """The one-line row above the chat input: what the next message is sent with."""
    parts = [model or "model: auto"]
    if settings.temperature is not None:
        parts.append(f"temp {settings.temperature:g}")
    if settings.top_p is not None:
        parts.append(f"top_p {settings.top_p:g}")
    if settings.max_tokens is not None:
        parts.append(f"max {settings.max_tokens}")
    if settings.enable_thinking is not None:
        parts.append("think on" if settings.enable_thinking else "think off")
    if settings.ignore_eos:
        parts.append("ignore eos")
    if system:
        parts.append(f"system: {system[:30]}")
    parts += [f"📎 {image.name}" for image in settings.images]
    return " · ".join(parts)


# -- what a command asks for ------------------------------------------------------
@dataclass(frozen=True)
class NewSettings:
    """The next requests are sent with these settings."""

    settings: ChatSettings


@dataclass(frozen=True)
class SetSystem:
    """The conversation's system prompt; None: none."""

    prompt: str | None


@dataclass(frozen=True)
class SetModel:
    """The model to ask for; None: the first one the server lists."""

    name: str | None


@dataclass(frozen=True)
class SetUrl:
    """The OpenAI-compatible base URL to talk to; None: the server qtui runs."""

    url: str | None


@dataclass(frozen=True)
class PaneAction:
    """One of the pane's own actions, the same as its key (ctrl+n, ctrl+y, ctrl+o)."""

    action: Literal["new_conversation", "copy", "history"]


@dataclass(frozen=True)
class ShowHelp:
    """/help, or a command there is none of: show the list."""

    text: str


@dataclass(frozen=True)
class Refused:
    """A command with a value it cannot take; nothing changes."""

    error: str
    """What is wrong, in words that say what would be right."""


ChatCommand = NewSettings | SetSystem | SetModel | SetUrl | PaneAction | ShowHelp | Refused


# -- the commands -------------------------------------------------------------------
def _number(text: str, kind: type[float] | type[int], what: str, low: float, high: float) -> Any:
    """A setting from a slash command; an empty argument resets it to the server default."""
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low:g} and {high:g}")
    return value


def _temperature(arg: str, settings: ChatSettings) -> ChatCommand:
    return NewSettings(replace(settings, temperature=_number(arg, float, "temperature", 0.0, 2.0)))


def _top_p(arg: str, settings: ChatSettings) -> ChatCommand:
    return NewSettings(replace(settings, top_p=_number(arg, float, "top_p", 0.0, 1.0)))


def _max_tokens(arg: str, settings: ChatSettings) -> ChatCommand:
    return NewSettings(replace(settings, max_tokens=_number(arg, int, "max tokens", 1, 10_000_000)))


def _think(arg: str, settings: ChatSettings) -> ChatCommand:
    if arg not in ("on", "off", "default"):
        raise ValueError("/think on, off or default")
    return NewSettings(replace(settings, enable_thinking=None if arg == "default" else arg == "on"))


def _ignore_eos(arg: str, settings: ChatSettings) -> ChatCommand:
    if arg not in ("on", "off"):
        raise ValueError("/ignore_eos on or off")
    return NewSettings(replace(settings, ignore_eos=arg == "on"))


def _image(arg: str, settings: ChatSettings) -> ChatCommand:
    path = Path(arg).expanduser()
    if not path.is_file():
        raise ValueError(f"no file {path}")
    image_data_url(path)  # raises ValueError for something that is not an image
    return NewSettings(replace(settings, images=(*settings.images, path)))


_Parse = Callable[[str, ChatSettings], ChatCommand]

COMMANDS: dict[str, tuple[str, _Parse]] = {
    "/new": ("", lambda arg, settings: PaneAction("new_conversation")),
    "/system": ("TEXT", lambda arg, settings: SetSystem(arg or None)),
    "/temp": ("T", _temperature),
    "/top_p": ("P", _top_p),
    "/max": ("N", _max_tokens),
    "/think": ("on|off|default", _think),
    "/ignore_eos": ("on|off", _ignore_eos),
    "/image": ("PATH", _image),
    "/copy": ("", lambda arg, settings: PaneAction("copy")),
    "/history": ("", lambda arg, settings: PaneAction("history")),
    "/model": ("NAME", lambda arg, settings: SetModel(arg or None)),
    "/url": ("URL", lambda arg, settings: SetUrl(arg or None)),
}
"""Each command's argument (as /help shows it) and what it makes of one."""

HELP = " · ".join(f"{name} {usage}".rstrip() for name, (usage, _) in COMMANDS.items())


def parse_command(text: str, settings: ChatSettings) -> ChatCommand | None:
    """What a line typed in the chat asks for, given the settings now; None for a
    message to send (it does not start with a slash)."""
    text = text.strip()
    if not text.startswith("/"):
        return None
    name, _, arg = text.partition(" ")
    command = COMMANDS.get(name.lower())
    if command is None:
        return ShowHelp(HELP)
    try:
        return command[1](arg.strip(), settings)
    except ValueError as error:
        return Refused(str(error))
