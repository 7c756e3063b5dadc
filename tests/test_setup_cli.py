"""`qtui tiny-model` and `qtui init`: what `make run` relies on, and their bad inputs."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from backend import paths
from tui.cli import main


def test_tiny_model_builds_a_servable_checkpoint_and_reuses_it(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "tiny"  # missing parents are made
    assert main(["tiny-model", str(target)]) == 0
    config = json.loads((target / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        item.name for item in target.iterdir()
    }
    built = (target / "model.safetensors").stat().st_mtime_ns
    assert main(["tiny-model", str(target)]) == 0
    assert (target / "model.safetensors").stat().st_mtime_ns == built, "reused, not rebuilt"


def test_tiny_model_into_an_unwritable_place_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["tiny-model", str(blocker / "tiny")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"qtui: cannot write a model to {blocker}")
    assert blocker.read_text() == "not a folder"


def test_init_writes_engine_and_profile_and_keeps_what_the_user_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QTUI_VLLM", raising=False)  # the environment would win over the file
    model = tmp_path / "m"
    model.mkdir()
    assert main(["init", "--engine", "/opt/vllm/bin/vllm", "--cpu-model", str(model)]) == 0
    written = tomllib.loads(paths.config_file().read_text())
    assert written["vllm"] == "/opt/vllm/bin/vllm"
    assert written["default_profile"] == "tiny-cpu"
    assert written["profiles"]["tiny-cpu"]["model"] == str(model)
    assert written["profiles"]["tiny-cpu"]["host"] == "127.0.0.1"
    assert main(["init", "--engine", "/elsewhere/vllm"]) == 0
    assert tomllib.loads(paths.config_file().read_text())["vllm"] == "/opt/vllm/bin/vllm"
