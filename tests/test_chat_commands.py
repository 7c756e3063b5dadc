"""The chat's slash-command parser: a typed line in, what it asks for out (no pane, no App)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui.chat_commands import (
    COMMANDS,
    HELP,
    ChatSettings,
    NewSettings,
    PaneAction,
    Refused,
    SetModel,
    SetSystem,
    SetUrl,
    ShowHelp,
    parse_command,
    settings_line,
)

BASE = ChatSettings(temperature=0.7, max_tokens=100)


def new_settings(text: str, settings: ChatSettings = BASE) -> ChatSettings:
    result = parse_command(text, settings)
    assert isinstance(result, NewSettings), result
    return result.settings


@pytest.mark.parametrize(
    ("text", "changed"),
    [
        ("/temp 0.3", {"temperature": 0.3}),
        ("/temp 0", {"temperature": 0.0}),
        ("/temp 2", {"temperature": 2.0}),
        ("/temp", {"temperature": None}),  # no value: back to the server's default
        ("/top_p 0.5", {"top_p": 0.5}),
        ("/top_p 1", {"top_p": 1.0}),
        ("/top_p", {"top_p": None}),
        ("/max 9", {"max_tokens": 9}),
        ("/max 10000000", {"max_tokens": 10_000_000}),
        ("/max", {"max_tokens": None}),
        ("/think on", {"enable_thinking": True}),
        ("/think off", {"enable_thinking": False}),
        ("/think default", {"enable_thinking": None}),
        ("/ignore_eos on", {"ignore_eos": True}),
        ("/ignore_eos off", {"ignore_eos": False}),
    ],
)
def test_a_setting_command_gives_new_settings_and_leaves_the_rest(
    text: str, changed: dict[str, object]
) -> None:
    after = new_settings(text)
    for name, value in changed.items():
        assert getattr(after, name) == value
        assert type(getattr(after, name)) is type(value)
    untouched = {name: getattr(BASE, name) for name in vars(BASE) if name not in changed}
    assert {name: getattr(after, name) for name in untouched} == untouched


def test_settings_reach_the_request_options() -> None:
    settings = new_settings("/ignore_eos on", new_settings("/think off"))
    options = settings.options()
    assert (options.temperature, options.top_p, options.max_tokens) == (0.7, None, 100)
    assert (options.enable_thinking, options.ignore_eos) == (False, True)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("/temp hot", "temperature: 'hot' is not a number"),
        ("/temp 7", "temperature must be between 0 and 2"),
        ("/temp -0.1", "temperature must be between 0 and 2"),
        ("/top_p 1.5", "top_p must be between 0 and 1"),
        ("/top_p half", "top_p: 'half' is not a number"),
        ("/max 0", "max tokens must be between 1 and 1e+07"),
        ("/max 10000001", "max tokens must be between 1 and 1e+07"),
        ("/max 2.5", "max tokens: '2.5' is not a number"),
        ("/max lots", "max tokens: 'lots' is not a number"),
        ("/think maybe", "/think on, off or default"),
        ("/think", "/think on, off or default"),
        ("/ignore_eos yes", "/ignore_eos on or off"),
        ("/ignore_eos", "/ignore_eos on or off"),
    ],
)
def test_a_bad_value_is_refused_with_what_would_be_right(text: str, error: str) -> None:
    assert parse_command(text, BASE) == Refused(error)


def test_an_image_is_attached_after_those_before(tmp_path: Path) -> None:
    first, second = tmp_path / "a.png", tmp_path / "b.jpg"
    first.write_bytes(b"\x89PNG\r\n\x1a\n")
    second.write_bytes(b"\xff\xd8\xff")
    settings = new_settings(f"/image {second}", new_settings(f"/image {first}"))
    assert settings.images == (first, second)
    assert settings.temperature == 0.7


def test_an_image_path_may_start_with_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert new_settings("/image ~/cat.png").images == (tmp_path / "cat.png",)


def test_an_image_that_is_not_there_or_not_an_image_is_refused(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    missing = tmp_path / "gone.png"
    assert parse_command(f"/image {missing}", BASE) == Refused(f"no file {missing}")
    assert parse_command(f"/image {tmp_path}", BASE) == Refused(f"no file {tmp_path}")
    assert parse_command(f"/image {notes}", BASE) == Refused(
        f"{notes} does not look like an image (text/plain)"
    )


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("/new", PaneAction("new_conversation")),
        ("/copy", PaneAction("copy")),
        ("/history", PaneAction("history")),
        ("/system Be kind.", SetSystem("Be kind.")),
        ("/system   Answer  in French.  ", SetSystem("Answer  in French.")),
        ("/system", SetSystem(None)),
        ("/model qwen-tiny", SetModel("qwen-tiny")),
        ("/model", SetModel(None)),
        ("/url http://127.0.0.1:8000/v1", SetUrl("http://127.0.0.1:8000/v1")),
        ("/url", SetUrl(None)),
    ],
)
def test_a_command_for_the_pane_says_what_to_do(text: str, result: object) -> None:
    assert parse_command(text, BASE) == result


@pytest.mark.parametrize("text", ["/help", "/", "/tmep 0.3", "/maxtokens 5", "/max\t5", "/?"])
def test_help_and_unknown_commands_show_the_list(text: str) -> None:
    assert parse_command(text, BASE) == ShowHelp(HELP)


def test_the_list_names_every_command_with_its_argument() -> None:
    assert HELP == (
        "/new · /system TEXT · /temp T · /top_p P · /max N · /think on|off|default · "
        "/ignore_eos on|off · /image PATH · /copy · /history · /model NAME · /url URL"
    )
    assert all(name in HELP for name in COMMANDS)


def test_command_names_ignore_case_and_the_line_its_outer_spaces() -> None:
    assert new_settings("  /MAX 12  ").max_tokens == 12
    assert parse_command("/Ignore_EOS on", BASE) == NewSettings(
        ChatSettings(temperature=0.7, max_tokens=100, ignore_eos=True)
    )
    assert parse_command("/think ON", BASE) == Refused("/think on, off or default")


@pytest.mark.parametrize("text", ["hello", "what is /max?", "  hi /temp 1", ""])
def test_a_line_that_does_not_start_with_a_slash_is_a_message(text: str) -> None:
    assert parse_command(text, BASE) is None


def test_the_settings_line_shows_what_is_set() -> None:
    assert settings_line(ChatSettings(), None, None) == "model: auto"
    settings = ChatSettings(0.3, 0.5, 9, False, True, (Path("/tmp/pixel.png"),))
    assert settings_line(settings, "tiny", "Be kind, always, to everyone you meet.") == (
        "tiny · temp 0.3 · top_p 0.5 · max 9 · think off · ignore eos"
        " · system: Be kind, always, to everyone y · 📎 pixel.png"  # its first 30 characters
    )
