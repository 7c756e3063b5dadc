"""The one error a headless command raises to end with a message and an exit code."""

from __future__ import annotations


class CommandError(Exception):
    """A headless command failed; the message is the one line the user sees."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
