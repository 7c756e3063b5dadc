"""Saving a profile is all or nothing: written, or the settings in memory exactly as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend import paths
from backend.config import (
    ConfigNotSaved,
    Settings,
    cpu_profile,
    delete_profile,
    load_settings,
    save_profile,
)


def two_profiles() -> Settings:
    return Settings(
        profiles={"a": cpu_profile("/models/a"), "b": cpu_profile("/models/b", port=8001)},
        default_profile="b",
    )


def test_save_and_delete_write_the_config() -> None:
    settings = two_profiles()
    path = save_profile(settings, "c", cpu_profile("/models/c", port=8002))
    assert path == paths.config_file()
    assert load_settings().profiles["c"].port == 8002
    delete_profile(settings, "b")
    assert settings.default_profile is None  # the default named the deleted profile
    on_disk = load_settings()
    assert list(on_disk.profiles) == ["a", "c"] and on_disk.default_profile is None


def test_a_profile_given_as_data_is_validated_first() -> None:
    settings = two_profiles()
    save_profile(settings, "q", {"model": "/models/q", "served_model_name": "q"})
    assert settings.profiles["q"].served_model_name == "q"
    before = settings.model_dump()
    with pytest.raises(ConfigNotSaved, match="port"):
        save_profile(settings, "bad", {"model": "/models/x", "port": 70000})
    assert settings.model_dump() == before
    assert "bad" not in load_settings().profiles


@pytest.mark.parametrize("change", ["add", "replace", "delete"])
def test_a_failed_write_leaves_the_settings_exactly_as_before(
    read_only_config: Path, change: str
) -> None:
    settings = two_profiles()
    profiles = settings.profiles
    kept = dict(profiles)
    before = settings.model_dump()
    with pytest.raises(ConfigNotSaved, match=f"cannot write {read_only_config}"):
        if change == "add":
            save_profile(settings, "c", cpu_profile("/models/c"))
        elif change == "replace":
            save_profile(settings, "a", cpu_profile("/models/other"))
        else:
            delete_profile(settings, "b")
    assert settings.model_dump() == before
    assert settings.profiles is profiles  # the same dict, in the same order,
    assert all(profiles[name] is kept[name] for name in kept)  # holding the same objects
    assert list(profiles) == ["a", "b"] and settings.default_profile == "b"
    assert not read_only_config.exists()


def test_deleting_a_profile_the_user_does_not_have_is_a_key_error() -> None:
    settings = two_profiles()
    with pytest.raises(KeyError):
        delete_profile(settings, "qwen3.6-27b-int4-mtp")  # a built-in
    assert list(settings.profiles) == ["a", "b"]
