"""A modal list of past chat conversations; Enter reopens one (the chat's ctrl+o)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from backend.transcripts import list_conversations


class ConversationPicker(ModalScreen[str | None]):
    """A list of past conversations, newest first; Enter reopens one."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close", id="chat.history.close")]
    DEFAULT_CSS = """
    ConversationPicker { align: center middle; }
    ConversationPicker > OptionList { width: 90%; height: 80%; border: round $accent; }
    """

    def compose(self) -> ComposeResult:
        options = [
            Option(f"{summary.title}  ({summary.messages} turns)", id=summary.id)
            for summary in list_conversations()
        ]
        picker = OptionList(*options) if options else OptionList(Option("(none yet)", id=""))
        picker.border_title = "Past conversations"
        yield picker

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id or None)
