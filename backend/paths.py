"""Where qtui keeps its files (XDG locations via platformdirs).

Each location can be moved with an environment variable, which tests use to
keep every run in its own temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_config_path, user_data_path, user_state_path

APP_NAME = "qtui"


def _from_env(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else default


def config_file() -> Path:
    """The TOML config file; `QTUI_CONFIG` points at another one."""
    return _from_env("QTUI_CONFIG", user_config_path(APP_NAME) / "config.toml")


def state_dir() -> Path:
    """Server state file, server logs, job logs (`QTUI_STATE_DIR` overrides)."""
    path = _from_env("QTUI_STATE_DIR", user_state_path(APP_NAME))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Chat transcripts and other user data (`QTUI_DATA_DIR` overrides)."""
    path = _from_env("QTUI_DATA_DIR", user_data_path(APP_NAME))
    path.mkdir(parents=True, exist_ok=True)
    return path


def logs_dir() -> Path:
    path = state_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def configured_theme(default: str = "qtui-dark") -> str:
    """The theme the config names, read without loading the settings.

    The panel paints its first frame before pydantic is imported; reading this
    one key with tomllib lets that frame already wear the user's theme.
    """
    import tomllib

    if theme := os.environ.get("QTUI_THEME"):
        return theme
    try:
        with open(config_file(), "rb") as handle:
            value = tomllib.load(handle).get("theme")
    except (OSError, ValueError):
        return default
    return value if isinstance(value, str) else default
