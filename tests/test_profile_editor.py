"""Pilot tests of the profile editor: keys in, command preview, config file, real restart."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Select, Static

from backend import paths
from backend.config import ServeProfile, Settings, SpeculativeSettings, cpu_profile
from backend.engine import KNOWN_KV_DTYPES, Engine, engine_facts
from backend.supervisor import Phase, ServerSupervisor, group_members
from tests.conftest import engine_spec, free_port
from tui.app import CONTROL_GROUP, QtuiApp, make_app
from tui.profile_fields import (
    FIELDS,
    SECTIONS,
    FieldProblem,
    control_values,
    field_label,
    parse_max_model_len,
    profile_changes,
    read_profile,
    visible_keys,
)
from tui.screens.profile_editor import ProfileEditorScreen
from tui.screens.server import ServerScreen
from tui.widgets.profile_form import ProfileForm

NARROW = (80, 24)
WIDE = (160, 50)


def build_app(model: Path, engine: Engine, state_dir: Path, **profile_changes: object) -> QtuiApp:
    profile = cpu_profile(str(model), port=free_port()).model_copy(update=profile_changes)
    settings = Settings(
        vllm=engine_spec(), profiles={"tiny-cpu": profile}, default_profile="tiny-cpu"
    )
    return make_app(
        settings=settings,
        supervisor=ServerSupervisor(engine, state_dir=state_dir),
        poll_interval_s=0.2,
    )


async def open_editor(app: QtuiApp, pilot: Pilot[int], name: str = "tiny-cpu") -> ProfileForm:
    await app.push_screen(ProfileEditorScreen(name))
    await pilot.pause()
    assert isinstance(app.screen, ProfileEditorScreen)
    return app.screen.query_one(ProfileForm)


async def type_into(pilot: Pilot[int], control: Widget, text: str) -> None:
    """Focus a text control, clear it with keys, and type `text`."""
    control.focus()
    await pilot.pause()
    await pilot.press("end", "ctrl+u", *text)
    await pilot.pause()


async def choose(pilot: Pilot[int], select: Widget, value: str) -> None:
    """Open a Select with enter and move with the arrow keys until `value` is chosen."""
    assert isinstance(select, Select)
    select.focus()
    await pilot.press("enter")
    options = [option for _, option in select._options]
    steps = options.index(value) - options.index(select.value)
    await pilot.press(*(["down"] * steps if steps > 0 else ["up"] * -steps), "enter")
    await pilot.pause()
    assert select.value == value


def text_of(app: QtuiApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def message_of(form: ProfileForm, key: str) -> str:
    box = form.control_for(key).parent
    assert box is not None and box.parent is not None
    message = box.parent.query_one(".form-message", Static)
    return str(message.render()) if message.display else ""


def saved_config() -> dict[str, Any]:
    path = paths.config_file()
    return tomllib.loads(path.read_text()) if path.exists() else {}


def saved_profiles() -> dict[str, Any]:
    profiles = saved_config().get("profiles", {})
    assert isinstance(profiles, dict)
    return profiles


def notifications(app: QtuiApp) -> list[str]:
    return [n.message for n in app._notifications]


async def until(pilot: Pilot[int], check: Callable[[], bool], timeout: float = 15) -> None:
    """Let the app run until `check()` holds (the editor's watcher polls every 0.2 s)."""
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition never held")


@pytest.mark.parametrize("size", [NARROW, WIDE])
async def test_port_edit_changes_preview_and_save_writes_it(
    tiny_model: Path, engine: Engine, tmp_path: Path, size: tuple[int, int]
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    new_port = free_port()
    async with app.run_test(size=size) as pilot:
        form = await open_editor(app, pilot)
        before = text_of(app, "#preview-command")
        assert before.startswith(f"$ {engine.command[0]} serve {tiny_model.resolve()}")
        assert f"--port {new_port}" not in before

        await type_into(pilot, form.control_for("port"), str(new_port))
        assert f"--port {new_port}" in text_of(app, "#preview-command")
        assert "unsaved changes" in text_of(app, "#editor-title")
        assert saved_config() == {}  # nothing written before ctrl+s

        await pilot.press("ctrl+s")
        await pilot.pause()
        profiles = saved_profiles()
        assert profiles["tiny-cpu"]["port"] == new_port
        assert app.profile is not None and app.profile.port == new_port
        assert "unsaved changes" not in text_of(app, "#editor-title")
        assert app.screen.has_class("-wide") == (size == WIDE)
        side = app.screen.query_one("#editor-side").region
        form_region = form.region
        if size == WIDE:  # preview to the right of the form
            assert side.x >= form_region.right and side.height > 10
        else:  # preview docked under the form, about four lines of text
            assert side.y >= form_region.bottom and side.height <= 6


@pytest.mark.parametrize(
    ("key", "bad", "complaint"),
    [
        ("port", "70000", "out of range: 1-65535"),
        ("gpu_memory_utilization", "1.5", "above 0, at most 1"),
        ("max_model_len", "25.6K", "did you mean 25.6k"),
        ("model", "/nonexistent/ckpt", "no directory /nonexistent/ckpt"),
        ("extra_args", "--chat-template 'unclosed", "cannot split like a shell"),
        ("extra_args", "--api-key sk-123", "visible to every user in `ps`"),
        ("api_key_env", "sk-live-123", "NAME of an environment variable"),
        ("env", "JUSTAWORD", "line 1: write KEY=VALUE"),
        ("speculative.num_speculative_tokens", "40", "out of range: 1-16"),
    ],
)
async def test_bad_value_shows_message_and_save_is_refused(
    tiny_model: Path, engine: Engine, tmp_path: Path, key: str, bad: str, complaint: str
) -> None:
    # Spec on, so the draft-token field is shown.
    spec_on = SpeculativeSettings(method="ngram", num_speculative_tokens=2)
    app = build_app(tiny_model, engine, tmp_path / "state", speculative=spec_on)
    async with app.run_test(size=NARROW) as pilot:
        form = await open_editor(app, pilot)
        assert message_of(form, key) == ""
        control = form.control_for(key)
        if key == "env":
            control.focus()  # a new first line above the two good ones
            await pilot.press("up", "up", "home", *bad, "enter")
            await pilot.pause()
        else:
            await type_into(pilot, control, bad)
        assert complaint in message_of(form, key)
        assert f"✖ fix {FIELDS[key].label}; last valid: $ " in text_of(app, "#preview-command")

        await pilot.press("ctrl+s")
        await pilot.pause()
        assert saved_config() == {}
        assert any(m.startswith("Not saved: fix") for m in notifications(app))
        assert app.focused is control  # sent back to the field to fix


async def test_spec_method_by_keys_in_wide_layout(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    async with app.run_test(size=WIDE) as pilot:
        form = await open_editor(app, pilot)
        lookup_box = form.control_for("speculative.prompt_lookup_max").parent
        assert lookup_box is not None and lookup_box.parent is not None
        assert not lookup_box.parent.display  # ngram-only fields hidden while spec is off
        assert "--speculative-config" not in text_of(app, "#preview-command")

        await choose(pilot, form.control_for("speculative.method"), "ngram")
        command = text_of(app, "#preview-command")
        spec_json = '{"method":"ngram","num_speculative_tokens":2,"prompt_lookup_max":3}'
        assert f"--speculative-config '{spec_json}'" in command  # quoted: pastes into a shell
        assert lookup_box.parent.display

        await type_into(pilot, form.control_for("speculative.num_speculative_tokens"), "4")
        assert '"num_speculative_tokens":4' in text_of(app, "#preview-command")

        await choose(pilot, form.control_for("speculative.method"), "eagle3")
        assert "eagle3 needs a draft checkpoint" in message_of(form, "speculative.draft_model")


async def test_kv_dtypes_come_from_the_installed_vllm_and_fork_names_are_explained(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state", kv_cache_dtype="tq-t4nc")
    async with app.run_test(size=NARROW) as pilot:
        form = await open_editor(app, pilot)
        select = form.control_for("kv_cache_dtype")
        assert isinstance(select, Select)
        offered = [value for _, value in select._options]
        accepted = engine_facts(engine).kv_cache_dtypes
        assert offered == [*accepted, "tq-t4nc"]  # the profile's fork name kept, labelled
        assert "fork's name" in message_of(form, "kv_cache_dtype")
        assert "--kv-cache-dtype turboquant_4bit_nc" in text_of(app, "#preview-command")

        await choose(pilot, select, "turboquant_4bit_nc")
        assert "call this 'tq-t4nc'" in message_of(form, "kv_cache_dtype")
        await choose(pilot, select, "fp8")
        assert message_of(form, "kv_cache_dtype") == ""


async def test_api_key_is_named_never_shown_and_public_host_warns(
    tiny_model: Path, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-do-not-show-4242"
    monkeypatch.setenv("QTUI_TEST_API_KEY", secret)
    app = build_app(tiny_model, engine, tmp_path / "state")
    async with app.run_test(size=WIDE) as pilot:
        form = await open_editor(app, pilot)
        await type_into(pilot, form.control_for("host"), "0.0.0.0")
        assert "exposes the server beyond this machine" in message_of(form, "host")
        assert "without an API key" in text_of(app, "#preview-check")

        await type_into(pilot, form.control_for("api_key_env"), "QTUI_TEST_API_KEY")
        assert "API key guards it" in message_of(form, "host")
        shown = "\n".join(
            text_of(app, f"#{name}") for name in ("preview-command", "preview-env", "preview-check")
        )
        assert "VLLM_API_KEY (from $QTUI_TEST_API_KEY)" in shown
        assert secret not in shown and "--api-key" not in shown
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert secret not in paths.config_file().read_text()


async def test_save_as_duplicate_and_delete(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    async with app.run_test(size=NARROW) as pilot:
        form = await open_editor(app, pilot)
        await type_into(pilot, form.control_for("max_model_len"), "1k")
        await pilot.press("ctrl+n")
        await pilot.pause()
        await pilot.press("end", "ctrl+u", *"tiny-1k", "enter")
        await pilot.pause()
        profiles = saved_profiles()
        assert profiles["tiny-1k"]["max_model_len"] == "1k"
        assert profiles["tiny-cpu"]["max_model_len"] == 512  # the original stays as it was
        assert app.profile_name == "tiny-1k"
        assert "Profile tiny-1k" in text_of(app, "#editor-title")

        await pilot.press("ctrl+t")
        await pilot.pause()
        assert set(saved_profiles()) == {"tiny-cpu", "tiny-1k", "tiny-1k-copy"}
        assert app.profile_name == "tiny-1k-copy"

        await pilot.press("f8")
        await pilot.pause()
        await pilot.press("n")  # changed my mind
        await pilot.pause()
        assert "tiny-1k-copy" in saved_profiles()
        await pilot.press("f8")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert set(saved_profiles()) == {"tiny-cpu", "tiny-1k"}
        assert isinstance(app.screen, ServerScreen)  # the editor closed
        assert app.profile_name == "tiny-cpu"  # the default is selected again


async def test_a_failed_save_keeps_the_settings_and_the_typing(
    tiny_model: Path, engine: Engine, tmp_path: Path, read_only_config: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    async with app.run_test(size=NARROW) as pilot:
        form = await open_editor(app, pilot)
        before = app.settings.model_dump()
        new_port = free_port()
        await type_into(pilot, form.control_for("port"), str(new_port))

        await pilot.press("ctrl+s")
        await pilot.pause()
        assert any(
            m.startswith(f"Could not save: cannot write {read_only_config}")
            for m in notifications(app)
        )
        await pilot.press("ctrl+t")  # duplicate: a new name, refused the same way
        await pilot.pause()
        assert app.settings.model_dump() == before
        assert app.profile_name == "tiny-cpu" and app.profile is not None
        assert app.profile.port != new_port
        # Nothing typed is lost: the form still reads the edit, still unsaved.
        assert form.reading.profile is not None and form.reading.profile.port == new_port
        assert "unsaved changes" in text_of(app, "#editor-title")

        await pilot.press("f8")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert any(m.startswith("Could not delete: cannot write") for m in notifications(app))
        assert app.settings.model_dump() == before
        assert isinstance(app.screen, ProfileEditorScreen)  # still open, still editing
        assert not read_only_config.exists()


async def test_builtin_profile_is_read_only(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    async with app.run_test(size=NARROW) as pilot:
        form = await open_editor(app, pilot, "qwen3.6-27b-int4-mtp")
        assert "read-only" in text_of(app, "#editor-title")
        assert "hub id" in message_of(form, "model")
        command = text_of(app, "#preview-command")
        assert (
            "--kv-cache-dtype fp8" in command
            and "--compilation-config.cudagraph_mode=NONE" in command
        )
        await type_into(pilot, form.control_for("port"), "8899")
        await pilot.press("ctrl+s")
        await pilot.pause()
        await pilot.press("f8")
        await pilot.pause()
        assert saved_config() == {}
        assert any("read-only" in m for m in notifications(app))
        assert any("cannot be deleted" in m for m in notifications(app))


async def test_palette_reaches_the_editor_actions(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    async with app.run_test(size=NARROW) as pilot:
        await open_editor(app, pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Profile: Duplicate")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert "tiny-cpu-copy" in saved_profiles()


async def test_escape_asks_once_before_dropping_changes(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    async with app.run_test(size=NARROW) as pilot:
        form = await open_editor(app, pilot)
        await type_into(pilot, form.control_for("max_num_seqs"), "4")
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ProfileEditorScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ServerScreen)
        assert saved_config() == {}


async def test_apply_without_a_server_only_selects(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    async with app.run_test(size=NARROW) as pilot:
        form = await open_editor(app, pilot)
        await until(pilot, lambda: "not running" in text_of(app, "#running-diff"))
        await choose(pilot, form.control_for("speculative.method"), "ngram")
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.profile is not None and app.profile.speculative.method == "ngram"
        assert app.supervisor.load_record() is None  # nothing was started
        assert not [w for w in app.workers if w.group == CONTROL_GROUP]


async def finish_control(app: QtuiApp) -> None:
    for worker in list(app.workers):
        if worker.group == CONTROL_GROUP:
            await worker.wait()


async def test_apply_restarts_the_real_server_with_the_edit(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    sup = app.supervisor
    try:
        async with app.run_test(size=NARROW) as pilot:
            app.action_start_server()  # what `s` on the Server screen does
            await finish_control(app)
            first = sup.load_record()
            assert first is not None and first.spec == "off"

            form = await open_editor(app, pilot)
            await until(pilot, lambda: "with these settings" in text_of(app, "#running-diff"))
            await choose(pilot, form.control_for("speculative.method"), "ngram")
            diff = text_of(app, "#running-diff")
            assert "1 change(s)" in diff and "speculative.method: off → ngram" in diff

            await pilot.press("ctrl+r")
            await pilot.pause()
            await finish_control(app)
            second = sup.load_record()
            assert second is not None and second.pid != first.pid
            assert second.spec == "ngram"
            assert second.serve_profile.speculative.method == "ngram"
            assert '"method":"ngram"' in second.command
            assert sup.status().phase == Phase.READY
            assert group_members(first.pgid) == []
            profiles = saved_profiles()
            assert profiles["tiny-cpu"]["speculative"]["method"] == "ngram"
            await until(pilot, lambda: "with these settings" in text_of(app, "#running-diff"))
    finally:
        sup.stop()
    assert sup.status().phase == Phase.STOPPED


async def test_editor_for_an_unknown_profile_closes_with_a_message(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    app = build_app(tiny_model, engine, tmp_path / "state")
    async with app.run_test(size=NARROW) as pilot:
        await app.push_screen(ProfileEditorScreen("no-such-profile"))
        await pilot.pause()
        assert isinstance(app.screen, ServerScreen)
        assert any("No profile named no-such-profile" in m for m in notifications(app))


# -- the parsing behind the form, on its own --------------------------------------
@pytest.mark.parametrize("name", ["tiny-cpu", "qwen3.6-27b-int4-mtp"])
def test_form_values_read_back_as_the_same_profile(tiny_model: Path, name: str) -> None:
    """Opening a profile and saving it untouched changes nothing."""
    settings = Settings(profiles={"tiny-cpu": cpu_profile(str(tiny_model))})
    profile = settings.all_profiles()[name]
    reading = read_profile(control_values(profile), profile, KNOWN_KV_DTYPES)
    assert reading.errors == {}
    assert reading.profile == profile


def test_the_table_describes_every_field_once() -> None:
    """Keys are real profile settings, read and shown the same way there and back."""
    profile = ServeProfile(model="/m")
    dumped = profile.model_dump()
    keys = [spec.key for _, specs in SECTIONS for spec in specs]
    assert len(keys) == len(set(keys)) == len(FIELDS)
    assert len({spec.slug for spec in FIELDS.values()}) == len(FIELDS)  # control ids
    for key in keys:
        parent, _, child = key.rpartition(".")
        assert child in (dumped[parent] if parent else dumped), key
    assert [spec.key for spec in FIELDS.values() if spec.engine_options] == ["kv_cache_dtype"]
    assert field_label("speculative.draft_model") == "Draft model"
    assert field_label("no_such") == "no_such"


@pytest.mark.parametrize(
    ("method", "shown"),
    [
        ("off", set()),
        ("mtp", {"speculative.num_speculative_tokens"}),
        ("ngram", {"speculative.num_speculative_tokens", "speculative.prompt_lookup_min",
                   "speculative.prompt_lookup_max"}),
        ("eagle3", {"speculative.num_speculative_tokens", "speculative.draft_model"}),
        ("draft_model", {"speculative.num_speculative_tokens", "speculative.draft_model"}),
    ],
)  # fmt: skip
def test_fields_show_only_for_the_spec_methods_they_mean_something_for(
    method: str, shown: set[str]
) -> None:
    depends = {"speculative.num_speculative_tokens", "speculative.prompt_lookup_min",
               "speculative.prompt_lookup_max", "speculative.draft_model"}  # fmt: skip
    assert visible_keys(method) == (set(FIELDS) - depends) | shown


def test_max_model_len_forms_agree_with_the_installed_vllm(engine: Engine) -> None:
    """Whatever the form accepts, vLLM's own parser accepts (run in the engine's Python)."""
    forms = ["512", "1k", "1K", "25.6k", "auto", "AUTO", "-1", " 2M ", "10T",
             "25.6K", "abc", "1.5", "1e3", "4096tokens", "0x100"]  # fmt: skip
    probe = (
        "import json, sys\n"
        "from vllm.utils.argparse_utils import human_readable_int_or_auto as parse\n"
        "verdicts = {}\n"
        "for form in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        verdicts[form] = parse(form)\n"
        "    except Exception:\n"
        "        verdicts[form] = None\n"
        "print(json.dumps(verdicts))\n"
    )
    assert engine.python is not None
    result = subprocess.run(
        [engine.python, "-c", probe, json.dumps(forms)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    vllm_verdicts = json.loads(result.stdout.strip().splitlines()[-1])
    for form in forms:
        try:
            ours = parse_max_model_len(form)
        except FieldProblem:
            ours = None
        assert (ours is not None) == (vllm_verdicts[form] is not None), form
    assert vllm_verdicts["25.6K"] is None and parse_max_model_len("25.6k") == "25.6k"


def test_changes_list_differences_and_ignore_the_model_path_spelling(tiny_model: Path) -> None:
    running = cpu_profile(str(tiny_model.resolve()), port=8000)
    relative = os.path.relpath(tiny_model)
    edited = cpu_profile(relative if relative.startswith(".") else f"./{relative}", port=8001)
    edited = edited.model_copy(update={"speculative": edited.speculative.toggled()})
    assert profile_changes(running, edited) == [
        ("port", 8000, 8001),
        ("speculative.method", "off", "ngram"),
    ]
    assert profile_changes(running, running) == []
