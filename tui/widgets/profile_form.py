"""ProfileForm: every serve-profile setting as a control, validated as you type.

The form owns the controls and their messages; what a value means lives in
`tui.profile_fields` (pure). Each change re-reads the whole form, so cross-field
rules (auto tool choice needs a parser, a public host needs a key) are always
current, and posts one `Edited` message with the reading.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Input, Label, Select, Static, Switch, TextArea

from backend.config import ServeProfile
from backend.engine import FORK_KV_DTYPE_ALIASES
from tui.profile_fields import (
    DEFAULT_CHOICE,
    FIELDS,
    SECTIONS,
    FieldSpec,
    FormReading,
    control_values,
    read_profile,
    visible_keys,
)

ControlValue = str | bool


def kv_dtype_options(accepted: tuple[str, ...], current: str) -> list[tuple[str, str]]:
    """What the installed vLLM accepts, plus the profile's own value if it is a fork name."""
    options = [(dtype, dtype) for dtype in accepted]
    if current not in accepted:
        upstream = FORK_KV_DTYPE_ALIASES.get(current)
        label = f"{current} (fork name of {upstream})" if upstream else f"{current} (not accepted)"
        options.append((label, current))
    return options


class ProfileForm(VerticalScroll):
    """Scrollable form over one ServeProfile; `reading` is always the latest parse."""

    class Edited(Message):
        """A control changed; `reading` holds the profile or the problems."""

        def __init__(self, form: ProfileForm, reading: FormReading) -> None:
            super().__init__()
            self.form = form
            self.reading = reading

        @property
        def control(self) -> ProfileForm:
            return self.form

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, ProfileForm.Edited)

    def __init__(
        self, profile: ServeProfile, kv_dtypes: tuple[str, ...], *, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.base = profile
        """Settings the form has no control for are kept from here."""
        self.kv_dtypes = kv_dtypes
        self.reading: FormReading = read_profile(control_values(profile), profile, kv_dtypes)
        self._shown_messages: dict[str, tuple[str, str]] = {}

    def compose(self) -> ComposeResult:
        values = control_values(self.base)
        for title, specs in SECTIONS:
            yield Static(title, classes="form-section")
            for spec in specs:
                with Vertical(classes="form-field", id=f"box-{spec.slug}"):
                    with Horizontal(classes="form-row"):
                        yield Label(spec.label, classes="form-label")
                        yield self._control(spec, values[spec.key])
                        if spec.kind == "switch":
                            # Spelled out too: a switch is colour only, lost under NO_COLOR.
                            yield Static(classes="switch-state")
                    yield Static(classes="form-message")

    def _control(self, spec: FieldSpec, value: ControlValue) -> Widget:
        control_id = f"field-{spec.slug}"
        if spec.kind == "switch":
            return Switch(bool(value), id=control_id, tooltip=spec.help, animate=False)
        if spec.kind == "select":
            options = list(spec.options)
            if spec.engine_options:
                options = kv_dtype_options(self.kv_dtypes, str(value))
            elif all(str(value) != option for _, option in options):
                options.append((f"{value} (unknown)", str(value)))
            return Select(
                options,
                value=str(value),
                allow_blank=False,
                compact=True,
                id=control_id,
                tooltip=spec.help,
            )
        if spec.kind == "lines":
            area = TextArea(str(value), compact=True, id=control_id, tooltip=spec.help)
            area.show_line_numbers = False
            return area
        kind = {"int": "integer", "float": "number"}.get(spec.kind, "text")
        return Input(
            str(value),
            placeholder=spec.placeholder,
            type=kind,  # type: ignore[arg-type]
            compact=True,
            id=control_id,
            tooltip=spec.help,
        )

    def on_mount(self) -> None:
        self.refresh_reading()

    # -- reading back --------------------------------------------------------
    def control_for(self, key: str) -> Widget:
        return self.query_one(f"#field-{FIELDS[key].slug}")

    def values(self) -> dict[str, ControlValue]:
        """The raw value of every control, by profile field."""
        values: dict[str, ControlValue] = {}
        for key in FIELDS:
            control = self.control_for(key)
            if isinstance(control, Switch):
                values[key] = control.value
            elif isinstance(control, Select):
                values[key] = DEFAULT_CHOICE if control.is_blank() else str(control.value)
            elif isinstance(control, TextArea):
                values[key] = control.text
            elif isinstance(control, Input):
                values[key] = control.value
        return values

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Switch.Changed)
    @on(TextArea.Changed)
    def _control_changed(self) -> None:
        self.refresh_reading()

    def refresh_reading(self) -> None:
        """Re-read every control, show each field's message, and post `Edited`."""
        values = self.values()
        reading = read_profile(values, self.base, self.kv_dtypes)
        self.reading = reading
        shown = visible_keys(str(values["speculative.method"]))
        for key, spec in FIELDS.items():
            box = self.query_one(f"#box-{spec.slug}", Vertical)
            box.display = key in shown
            box.set_class(key in reading.errors, "-invalid")
            shown_message = self._message_for(key, reading)
            if self._shown_messages.get(key) != shown_message:
                # Only changed messages: each update re-lays out the whole form.
                self._shown_messages[key] = shown_message
                self._show_message(box, *shown_message)
            if spec.kind == "switch":
                state = box.query_one(".switch-state", Static)
                if str(state.content) != (label := "on" if values[key] else "off"):
                    state.update(label)
        self.post_message(self.Edited(self, reading))

    @staticmethod
    def _show_message(box: Vertical, text: str, level: str) -> None:
        message = box.query_one(".form-message", Static)
        message.update(Content(text))
        for name in ("error", "warning", "note"):
            message.set_class(level == name, f"-{name}")
        message.display = bool(text)

    @staticmethod
    def _message_for(key: str, reading: FormReading) -> tuple[str, str]:
        if key in reading.errors:
            return f"✖ {reading.errors[key]}", "error"
        if key in reading.warnings:
            return f"! {reading.warnings[key]}", "warning"
        if key in reading.notes:
            return f"· {reading.notes[key]}", "note"
        return "", ""

    def focus_field(self, key: str) -> None:
        if key in FIELDS:
            control = self.control_for(key)
            control.focus()
            self.scroll_to_widget(control)
