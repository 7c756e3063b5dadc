"""The profile editor's name prompt: a new profile name, checked as you type."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from tui.profile_fields import profile_name_problem

PROMPT_CSS = """
ProfileNamePrompt {
    align: center middle;
}
ProfileNamePrompt > Vertical {
    width: 60;
    max-width: 100%;
    height: auto;
    border: round $primary;
    background: $surface;
    padding: 0 1;
}
ProfileNamePrompt .prompt-problem {
    color: $error;
    height: auto;
}
"""


class ProfileNamePrompt(ModalScreen[str | None]):
    """A name for a new profile; refuses names in use as you type."""

    DEFAULT_CSS = PROMPT_CSS
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="profile_name_cancel",
                        tooltip="Close without saving")]  # fmt: skip

    def __init__(self, title: str, suggestion: str, taken: set[str]) -> None:
        super().__init__()
        self.title_text = title
        self.suggestion = suggestion
        self.taken = taken

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text)
            yield Input(self.suggestion, placeholder="profile name", id="profile-name")
            yield Static(classes="prompt-problem")

    @on(Input.Changed)
    def _check(self, event: Input.Changed) -> None:
        problem = profile_name_problem(event.value.strip(), self.taken)
        self.query_one(".prompt-problem", Static).update(Content(problem or ""))

    @on(Input.Submitted)
    def _submit(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        if profile_name_problem(name, self.taken) is None:
            self.dismiss(name)
