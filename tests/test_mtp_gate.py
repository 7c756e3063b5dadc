"""The panel runs the MTP doctor before MTP is switched on: refuse, offer the patch, or go."""

from __future__ import annotations

import json
from pathlib import Path

from backend.config import ServeProfile, Settings, SpeculativeSettings
from backend.mtp_doctor import Verdict, diagnose_checkpoint
from backend.supervisor import ServerSupervisor
from backend.tiny_qwen35 import build_tiny_qwen35
from tui.app import CONTROL_GROUP, QtuiApp, make_app
from tui.screens.confirm import ConfirmScreen
from tui.widgets.status_bar import ServerStatusBar


def app_for(model: Path, state: Path) -> QtuiApp:
    profile = ServeProfile(model=str(model), speculative=SpeculativeSettings(toggle_method="mtp"))
    settings = Settings(profiles={"m": profile}, default_profile="m")
    return make_app(
        settings=settings, supervisor=ServerSupervisor(None, state_dir=state), poll_interval_s=5
    )


async def settle(app: QtuiApp) -> None:
    for worker in list(app.workers):
        if worker.group in (CONTROL_GROUP, "mtp-doctor"):
            await worker.wait()


def make_fixable(model: Path) -> None:
    """A quantization_config with no extra_config: vLLM would build mtp.fc quantized."""
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "auto-round",
        "bits": 4,
        "group_size": 128,
        "sym": True,
        "packing_format": "auto_round:auto_gptq",
    }
    (model / "config.json").write_text(json.dumps(config))


async def test_mtp_refused_with_reason_when_the_checkpoint_has_no_head(
    tiny_model: Path, tmp_path: Path
) -> None:
    app = app_for(tiny_model, tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app)
        await pilot.pause()
        bar = app.screen.query_one(ServerStatusBar)
        assert "MTP unavailable" in str(bar.render())
        await pilot.press("m")
        await pilot.pause()
        assert app.profile is not None and app.profile.speculative.method == "off"
        assert any("MTP unavailable" in n.message for n in app._notifications)


async def test_fixable_checkpoint_is_patched_after_confirming(tmp_path: Path) -> None:
    model = build_tiny_qwen35(tmp_path / "q35")
    make_fixable(model)
    assert diagnose_checkpoint(model).verdict == Verdict.FIXABLE
    app = app_for(model, tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app)
        await pilot.pause()
        assert "MTP needs a patch" in str(app.screen.query_one(ServerStatusBar).render())
        await pilot.press("m")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause()
        await settle(app)
        await pilot.pause()
        assert diagnose_checkpoint(model).verdict == Verdict.READY
        assert app.profile is not None and app.profile.speculative.method == "mtp"
        assert list(model.glob("qtui-backup-*")), "the changed files were backed up"
        await settle(app)
        await pilot.pause()
        assert "MTP" not in str(app.screen.query_one(ServerStatusBar).render()).split("model")[0]


async def test_declining_the_patch_changes_nothing(tmp_path: Path) -> None:
    model = build_tiny_qwen35(tmp_path / "q35")
    make_fixable(model)
    before = (model / "config.json").read_bytes()
    app = app_for(model, tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("m")
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        assert app.profile is not None and app.profile.speculative.method == "off"
    assert (model / "config.json").read_bytes() == before


async def test_ready_checkpoint_toggles_at_once(tmp_path: Path) -> None:
    model = build_tiny_qwen35(tmp_path / "q35")
    app = app_for(model, tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("m")
        await pilot.pause()
        assert app.profile is not None and app.profile.speculative.method == "mtp"
