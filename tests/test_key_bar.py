"""The key bar: which keys fit, what a click does, what the pointer shows."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding

from tui.widgets.key_bar import PALETTE_RULE, KeyBar, KeyHint, place_hints


def hint(key: str, description: str) -> KeyHint:
    return KeyHint(key, key, description, True, "")


def test_hints_that_do_not_fit_whole_are_left_out_and_the_palette_keeps_the_right_edge() -> None:
    hints = [hint("s", "Start"), hint("x", "Stop"), hint("r", "Restart")]
    palette = KeyHint("ctrl+p", "^p", "palette", True, "")

    placed = place_hints(hints, palette, width=40)
    # " s Start " 9 + " x Stop " 8 = 17; " r Restart " (11) would end at 28, past the
    # 40 - 12 cells the palette's rule and key leave.
    assert [(p.hint.key, p.start, p.end) for p in placed] == [
        ("s", 0, 9),
        ("x", 9, 17),
        ("r", 17, 28),
        ("ctrl+p", 29, 40),
    ]
    narrow = place_hints(hints, palette, width=30)
    assert [p.hint.key for p in narrow] == ["s", "x", "ctrl+p"]
    assert narrow[-1].end == 30
    assert place_hints(hints, palette, width=5) == []
    assert [p.hint.key for p in place_hints(hints, None, width=18)] == ["s", "x"]


class KeysApp(App[None]):
    BINDINGS = [
        Binding("a", "count", "Add", tooltip="add one"),
        Binding("b", "blocked", "Blocked"),
        Binding("z", "count", "Hidden", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.bells = 0

    def compose(self) -> ComposeResult:
        yield KeyBar()

    def action_count(self) -> None:
        self.count += 1

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return None if action == "blocked" else True

    def bell(self) -> None:
        self.bells += 1


async def test_the_bar_shows_the_shown_keys_and_a_click_presses_the_key_under_it() -> None:
    app = KeysApp()
    async with app.run_test(size=(60, 5)) as pilot:
        bar = app.query_one(KeyBar)
        line = bar.render().plain
        assert line.startswith(" a Add  b Blocked ")
        assert "Hidden" not in line
        assert line.endswith(f"{PALETTE_RULE}^p palette ")
        assert len(line) == 60

        await pilot.click(KeyBar, offset=(2, 0))  # on " a Add "
        assert app.count == 1
        await pilot.click(KeyBar, offset=(10, 0))  # on " b Blocked ": disabled
        assert (app.count, app.bells) == (1, 1)
        await pilot.click(KeyBar, offset=(30, 0))  # between the keys and the palette
        assert (app.count, app.bells) == (1, 1)

        await pilot.hover(KeyBar, offset=(3, 0))
        assert bar.tooltip == "add one"
        await pilot.hover(KeyBar, offset=(12, 0))
        assert bar.tooltip == "Blocked"  # no tooltip of its own: its description


async def test_a_disabled_key_is_drawn_dim() -> None:
    app = KeysApp()
    async with app.run_test(size=(60, 5)):
        line = app.query_one(KeyBar).render()
        blocked = line.plain.index("Blocked")
        styles_at = [span.style for span in line.spans if span.start <= blocked < span.end]
        assert any(getattr(style, "dim", False) for style in styles_at)
        added = line.plain.index("Add")
        styles_at = [span.style for span in line.spans if span.start <= added < span.end]
        assert not any(getattr(style, "dim", False) for style in styles_at)
