"""qtui's themes: Theme objects with app variables, and the TCSS that uses them.

The TCSS in this package uses `$variables` only; colours live here, in Theme
objects, so every theme (including the 256-colour and high-contrast ones)
restyles the whole panel. App variables name states, not colours:
`server-up`, `server-down`, `server-busy`, `gpu-hot`.
"""

from __future__ import annotations

from pathlib import Path

from textual.theme import Theme

TCSS_PATH = Path(__file__).with_name("qtui.tcss")


def _theme(name: str, *, dark: bool, variables: dict[str, str], **colors: str) -> Theme:
    return Theme(name=name, dark=dark, variables=variables, **colors)  # type: ignore[arg-type]


QTUI_THEMES: tuple[Theme, ...] = (
    _theme(
        "qtui-dark",
        dark=True,
        primary="#7aa2f7",
        secondary="#bb9af7",
        accent="#ff9e64",
        foreground="#c0caf5",
        background="#1a1b26",
        surface="#24283b",
        panel="#2f334d",
        success="#9ece6a",
        warning="#e0af68",
        error="#f7768e",
        variables={
            "server-up": "#9ece6a",
            "server-down": "#565f89",
            "server-busy": "#e0af68",
            "gpu-hot": "#f7768e",
        },
    ),
    _theme(
        "qtui-light",
        dark=False,
        primary="#2e5cb8",
        secondary="#7847bd",
        accent="#b5541a",
        foreground="#1f2328",
        background="#fafafa",
        surface="#eef0f3",
        panel="#dde2e8",
        success="#1a7f37",
        warning="#9a6700",
        error="#cf222e",
        variables={
            "server-up": "#1a7f37",
            "server-down": "#6e7781",
            "server-busy": "#9a6700",
            "gpu-hot": "#cf222e",
        },
    ),
    _theme(
        "qtui-high-contrast",
        dark=True,
        primary="#ffff00",
        secondary="#00ffff",
        accent="#ff00ff",
        foreground="#ffffff",
        background="#000000",
        surface="#000000",
        panel="#1c1c1c",
        success="#00ff00",
        warning="#ffff00",
        error="#ff0000",
        variables={
            "server-up": "#00ff00",
            "server-down": "#ffffff",
            "server-busy": "#ffff00",
            "gpu-hot": "#ff0000",
            "border": "#ffffff",
        },
    ),
    # Only xterm-256 palette entries, so a 256-colour terminal shows exactly these.
    _theme(
        "qtui-256",
        dark=True,
        primary="#5f87d7",
        secondary="#af87d7",
        accent="#ffaf5f",
        foreground="#d0d0d0",
        background="#121212",
        surface="#262626",
        panel="#303030",
        success="#87af5f",
        warning="#d7af5f",
        error="#d75f5f",
        variables={
            "server-up": "#87af5f",
            "server-down": "#6c6c6c",
            "server-busy": "#d7af5f",
            "gpu-hot": "#d75f5f",
        },
    ),
)

THEME_NAMES: tuple[str, ...] = tuple(theme.name for theme in QTUI_THEMES)
