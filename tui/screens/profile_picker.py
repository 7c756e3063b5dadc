"""A small modal to choose which serve profile `s` starts."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from backend.config import ServeProfile


class ProfilePicker(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="cancel_pick",
                        tooltip="Close without changing the profile")]  # fmt: skip

    def __init__(self, profiles: dict[str, ServeProfile], current: str | None) -> None:
        super().__init__()
        self.profiles = profiles
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Serve profile")
            options = [
                Option(f"{name}  [dim]{profile.model}[/dim]", id=name)
                for name, profile in self.profiles.items()
            ]
            yield OptionList(*options)

    def on_mount(self) -> None:
        option_list = self.query_one(OptionList)
        if self.current in self.profiles:
            option_list.highlighted = list(self.profiles).index(self.current)
        option_list.focus()

    @on(OptionList.OptionSelected)
    def choose(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
