"""The profile editor: edit a serve profile, see its `vllm serve` line, save, apply.

The form (tui.widgets.profile_form) turns keys into a profile; this screen
shows the exact command that profile launches, whether its KV cache fits
(tui.widgets.fit_box, predicted in a worker), how it differs from what the
server runs now, and does the profile-level actions: save, save as,
duplicate, delete, apply (save, then restart through the App's control
worker). Built-in profiles are read-only; "save as" makes a user copy.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from backend.config import (
    BUILTIN_PROFILES,
    ConfigNotSaved,
    ServeProfile,
    delete_profile,
    save_profile,
)
from backend.engine import KNOWN_KV_DTYPES, Engine, engine_facts
from backend.supervisor import ServerStatus
from tui.profile_fields import field_label, preview_command, profile_changes
from tui.screens.confirm import ConfirmScreen
from tui.screens.profile_prompts import ProfileNamePrompt
from tui.widgets.fit_box import FitBox
from tui.widgets.profile_form import ProfileForm

if TYPE_CHECKING:
    from tui.app import QtuiApp

WIDE_LAYOUT_MIN_COLUMNS = 120


def accepted_kv_dtypes(engine: Engine | None) -> tuple[str, ...]:
    """What the installed vLLM accepts (read from its source), or the known list."""
    return engine_facts(engine).kv_cache_dtypes if engine is not None else KNOWN_KV_DTYPES


def _shown(value: Any) -> str:
    text = "default" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "…"


class ProfileEditorCommands(Provider):
    """The editor's key bindings, also reachable from the command palette."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        screen = self.screen
        if not isinstance(screen, ProfileEditorScreen):
            return []
        commands: list[tuple[str, str, Callable[[], Any]]] = []
        for binding in screen.BINDINGS:
            assert isinstance(binding, Binding)
            run = partial(screen.run_action, binding.action)
            commands.append((f"Profile: {binding.description}", binding.tooltip, run))
        return commands

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            if (score := matcher.match(name)) > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


class ProfileEditorScreen(Screen[None]):
    """Edit one serve profile; preview its command; save, apply (restart), delete."""

    CSS_PATH = "profile_editor.tcss"
    COMMANDS = {ProfileEditorCommands}
    AUTO_FOCUS = "#field-model"
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", id="profile_save",
                tooltip="Save this profile to the config file"),
        Binding("ctrl+n", "save_as", "Save as", id="profile_save_as",
                tooltip="Save these settings under a new name (customise a built-in)"),
        Binding("ctrl+t", "duplicate", "Duplicate", id="profile_duplicate",
                tooltip="Save a copy named NAME-copy and edit the copy"),
        Binding("f8", "delete", "Delete", id="profile_delete",
                tooltip="Delete this user profile (built-ins cannot be deleted)"),
        Binding("ctrl+r", "apply", "Apply", id="profile_apply",
                tooltip="Save, then restart the running server with this profile"),
        Binding("escape", "close", "Close", id="profile_close",
                tooltip="Close the editor (asks once if there are unsaved changes)"),
    ]  # fmt: skip

    def __init__(self, profile_name: str) -> None:
        super().__init__()
        self.profile_name = profile_name
        self.saved: ServeProfile | None = None
        """The profile as stored; the form is dirty when it reads differently."""
        self.running: ServerStatus | None = None
        self._close_armed = False
        self._last_command = ""

    @property
    def qtui(self) -> QtuiApp:
        return cast("QtuiApp", self.app)

    @property
    def form(self) -> ProfileForm:
        return self.query_one(ProfileForm)

    @property
    def fit_box(self) -> FitBox:
        return self.query_one(FitBox)

    @property
    def read_only(self) -> bool:
        """Built-ins ship with qtui; a user profile of the same name overrides one."""
        name = self.profile_name
        return name in BUILTIN_PROFILES and name not in self.qtui.settings.profiles

    @property
    def dirty(self) -> bool:
        return self.form.reading.profile != self.saved

    def compose(self) -> ComposeResult:
        profiles = self.qtui.settings.all_profiles()
        self.saved = profiles.get(self.profile_name)
        engine = self.qtui.supervisor.engine
        yield Static(id="editor-title")
        with Horizontal(id="editor-body"):
            kv_dtypes = accepted_kv_dtypes(engine)
            if self.saved is not None:
                yield ProfileForm(self.saved, kv_dtypes, id="editor-form")
            with Vertical(id="editor-aside"):
                yield FitBox(engine, kv_dtypes, id="fit-box")
                with VerticalScroll(id="editor-side"):
                    yield Static(id="preview-command")
                    yield Static(id="preview-env")
                    yield Static(id="preview-check")
                    yield Static(id="running-diff")
        yield Footer()

    def on_mount(self) -> None:
        if self.saved is None:
            self.notify(f"No profile named {self.profile_name}", severity="error")
            self.app.pop_screen()
            return
        self._apply_width(self.size.width)
        self.query_one("#editor-side").border_title = "vllm serve"
        self._show_title()
        self.fit_box.request(self.saved, now=True)
        # The App's one watcher polls the server; the diff follows what it found.
        self.watch(self.app, "server_status", self._running_now, init=True)

    def on_resize(self) -> None:
        self._apply_width(self.size.width)

    def _apply_width(self, columns: int) -> None:
        self.set_class(columns >= WIDE_LAYOUT_MIN_COLUMNS, "-wide")

    # -- showing -------------------------------------------------------------
    def _show_title(self) -> None:
        kind = "built-in, read-only: ctrl+n saves a copy" if self.read_only else "user profile"
        dirty = " · unsaved changes" if self.is_mounted and self.dirty else ""
        title = self.query_one("#editor-title", Static)
        title.update(Content(f"Profile {self.profile_name} — {kind}{dirty}"))

    @on(ProfileForm.Edited)
    def _edited(self, event: ProfileForm.Edited) -> None:
        self._close_armed = False
        self._show_title()
        profile = event.reading.profile
        self.fit_box.request(profile)
        if profile is not None:
            self._show_preview(profile)
        else:
            # First line, so it shows in the four lines the narrow layout has.
            labels = [field_label(key) for key in event.reading.errors]
            command = self.query_one("#preview-command", Static)
            command.update(Content(f"✖ fix {', '.join(labels)}; last valid: {self._last_command}"))
            command.set_class(True, "-error")
        self._show_diff()

    def _show_preview(self, profile: ServeProfile) -> None:
        engine = self.qtui.supervisor.engine
        preview = preview_command(profile, engine, self.form.kv_dtypes)
        self._last_command = f"$ {preview.command}"
        command = self.query_one("#preview-command", Static)
        command.update(Content(self._last_command))
        command.set_class(False, "-error")
        self.query_one("#preview-env", Static).update(Content(preview.env_line))
        check = self.query_one("#preview-check", Static)
        if preview.refusal:
            check.update(Content(f"✖ launch check: {preview.refusal}"))
        else:
            lines = ["✔ launch check passes (the port is probed at start)", *preview.notes]
            check.update(Content("\n".join(lines)))
        check.set_class(bool(preview.refusal), "-error")

    def _running_now(self, status: ServerStatus | None) -> None:
        self.running = status
        self._show_diff()

    def _show_diff(self) -> None:
        diff = self.query_one("#running-diff", Static)
        status, edited = self.running, self.form.reading.profile
        if status is None:
            text = "Server: checking…"
        elif not status.phase.is_up or status.record is None:
            text = "Server: not running. Apply selects this profile (s starts it)."
        elif status.phase.value != "ready":
            text = f"Server: {status.phase.value}…"
        elif edited is None:
            text = f"Server runs {status.record.profile_name}; fix the fields to compare."
        else:
            record = status.record
            changes = profile_changes(record.serve_profile, edited)
            head = f"Server runs {record.profile_name}"
            if not changes:
                text = f"{head} with these settings."
            else:
                lines = [f"{head}; {len(changes)} change(s), apply restarts it:"]
                lines += [f"  {k}: {_shown(old)} → {_shown(new)}" for k, old, new in changes]
                text = "\n".join(lines)
        diff.update(Content(text))

    # -- actions ---------------------------------------------------------------
    def _valid_profile(self, verb: str) -> ServeProfile | None:
        reading = self.form.reading
        if reading.profile is None:
            labels = [field_label(key) for key in reading.errors]
            self.notify(f"Not {verb}: fix {', '.join(labels)}", severity="error")
            self.form.focus_field(next(iter(reading.errors)))
            return None
        return reading.profile

    def _store(self, name: str, profile: ServeProfile) -> bool:
        """Write `profile` as user profile `name`, select it, and edit it from now on."""
        try:
            path = save_profile(self.qtui.settings, name, profile)
        except ConfigNotSaved as error:
            # The settings are as before and the form keeps what was typed: fix, save again.
            self.notify(f"Could not save: {error}", severity="error")
            return False
        self.profile_name, self.saved = name, profile
        self.qtui.use_profile(name)
        self._show_title()
        self.notify(f"Saved {name} to {path}")
        return True

    def action_save(self) -> None:
        profile = self._valid_profile("saved")
        if profile is None:
            return
        if self.read_only:
            self.notify(
                f"{self.profile_name} is built in and read-only: ctrl+n (save as) to customise",
                severity="error",
            )
            return
        self._store(self.profile_name, profile)

    def action_save_as(self) -> None:
        profile = self._valid_profile("saved")
        if profile is None:
            return

        def named(name: str | None) -> None:
            if name:
                self._store(name, profile)

        taken = set(self.qtui.settings.all_profiles())
        suggestion = self._free_name(f"{self.profile_name}-custom")
        self.app.push_screen(ProfileNamePrompt("Save profile as", suggestion, taken), named)

    def _free_name(self, stem: str) -> str:
        taken = self.qtui.settings.all_profiles()
        name, number = stem, 2
        while name in taken:
            name, number = f"{stem}{number}", number + 1
        return name

    def action_duplicate(self) -> None:
        profile = self._valid_profile("duplicated")
        if profile is not None:
            self._store(self._free_name(f"{self.profile_name}-copy"), profile)

    def action_delete(self) -> None:
        name = self.profile_name
        if name not in self.qtui.settings.profiles:
            self.notify(
                f"{name} is built in and cannot be deleted: edit a copy (ctrl+n)",
                severity="error",
            )
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._delete(name)

        question = f"Delete profile {name} from the config file?"
        if name in BUILTIN_PROFILES:
            question += " The built-in of that name comes back."
        self.app.push_screen(ConfirmScreen(question, yes="Delete"), confirmed)

    def _delete(self, name: str) -> None:
        settings = self.qtui.settings
        try:
            delete_profile(settings, name)
        except ConfigNotSaved as error:
            self.notify(f"Could not delete: {error}", severity="error")
            return
        if self.qtui.profile_name == name:
            remaining = settings.all_profiles()
            successor = name if name in remaining else settings.default_profile
            successor = successor or next(iter(remaining), None)
            self.qtui.selected_profile = (successor, remaining[successor]) if successor else None
        self.notify(f"Deleted profile {name}")
        self.saved = None
        self.dismiss()

    def action_apply(self) -> None:
        profile = self._valid_profile("applied")
        if profile is None:
            return
        name = self.profile_name
        if profile != self.saved:
            if self.read_only:
                self.notify(
                    f"{name} is built in: save your changes under a new name first (ctrl+n)",
                    severity="error",
                )
                return
            if not self._store(name, profile):
                return
        else:
            self.qtui.use_profile(name)
        status = self.running or self.qtui.supervisor.status()
        if status.phase.is_up:
            self.notify(f"Restarting the server with {name}…")
            self.qtui.restart_with(name, profile)
        else:
            self.notify(f"The server is not running; {name} is selected: s starts it")

    def action_close(self) -> None:
        if self.saved is not None and self.dirty and not self._close_armed:
            self._close_armed = True
            self.notify(
                "Unsaved changes: escape again discards them, ctrl+s saves",
                severity="warning",
            )
            return
        self.dismiss()
