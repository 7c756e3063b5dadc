"""The Bench screen: spec decoding off vs on, on the model card's four prompts, by one key.

`a` runs what `qtui bench --ab` runs (backend.bench.run_bench, in a thread worker:
the server is restarted spec off and on, then left as it was); progress shows per
prompt; the result is the table and a bar chart of decode tok/s on vs off per
prompt. Past results (the data dir's bench/) are listed; picking one shows it.
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from backend.bench import (
    MODEL_CARD_PROMPTS,
    BenchError,
    BenchPrompt,
    BenchRun,
    fmt_rate,
    list_runs,
    result_table,
    run_bench,
    save_run,
)
from backend.serve_args import LaunchRefused
from backend.supervisor import ServerSupervisor, SupervisorError

BAR_COLOURS = ("$text-muted", "$accent")
"""The first half's bars, the second's (off is muted, spec on stands out)."""


def chart(run: BenchRun, width: int) -> str:
    """Decode tok/s per prompt, one bar per half, scaled to the fastest; the gain after."""
    if not run.halves:
        return ""
    rates = [
        [prompt.median("tokens_per_s") or 0.0 for prompt in half.prompts] for half in run.halves
    ]
    top = max((rate for row in rates for rate in row), default=0.0) or 1.0
    label_width = max(len(prompt.name) for prompt in run.halves[0].prompts) + 1
    spec_width = max(len(half.spec) for half in run.halves) + 1
    cells = max(8, width - label_width - spec_width - 18)
    speedups = run.speedups()
    lines = []
    for index, prompt in enumerate(run.halves[0].prompts):
        for number, half in enumerate(run.halves):
            rate = rates[number][index]
            filled = max(1, round(rate / top * cells)) if rate else 0
            name = prompt.name if number == 0 else ""
            line = (
                f"{escape(name):<{label_width}}{escape(half.spec):<{spec_width}}"
                f"[{BAR_COLOURS[number % 2]}]{'█' * filled}[/]{' ' * (cells - filled)} "
                f"{fmt_rate(rate):>7}"
            )
            gain = speedups.get(prompt.name)
            if half.spec != "off" and gain is not None:
                line += f" [b]{gain:.2f}x[/]"
            lines.append(line)
    return "\n".join(lines)


class BenchScreen(Screen[None]):
    """A/B bench of the server qtui runs, its progress, the table and the chart."""

    DEFAULT_CSS = """
    BenchScreen #bench-progress { height: auto; color: $text-muted; padding: 0 1; }
    BenchScreen #bench-runs { height: auto; max-height: 7; }
    BenchScreen #bench-chart { height: auto; padding: 0 1; }
    BenchScreen #bench-table { height: auto; padding: 0 1; color: $text-muted; }
    """

    BINDINGS = [
        Binding("a", "run_ab", "Run A/B", id="bench_run_ab",
                tooltip="Restart spec off, then on; the four prompts each; then as it was"),
        Binding("escape", "app.pop_screen", "Back", id="bench_back"),
    ]  # fmt: skip

    def __init__(
        self,
        supervisor: ServerSupervisor,
        *,
        prompts: tuple[BenchPrompt, ...] = MODEL_CARD_PROMPTS,
        ready_timeout_s: float = 900.0,
        url: str | None = None,
    ) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.url = url
        """A server qtui did not start: benched as it runs (no restarts, so no A/B)."""
        self.prompts = prompts
        self.ready_timeout_s = ready_timeout_s
        self.runs: list[dict[str, Any]] = []
        self.shown: BenchRun | None = None
        self.running = False

    def compose(self) -> ComposeResult:
        with Vertical():
            intro = (
                "[b]Bench[/]: decode tok/s, spec decoding off vs on, on the model card's four "
                "prompts (fixed lengths, greedy). [b]a[/] runs it: the server restarts twice."
            )
            if self.url:
                intro = (
                    f"[b]Bench[/] {escape(self.url)} (not started by qtui): decode tok/s on the "
                    "model card's four prompts as it runs now. [b]a[/] runs it (no restarts, "
                    "so no spec on/off A/B)."
                )
            yield Static(intro, id="bench-progress")
            yield DataTable(id="bench-runs", cursor_type="row", zebra_stripes=True)
            with VerticalScroll():
                yield Static(id="bench-chart")
                yield Static(id="bench-table")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#bench-runs", DataTable)
        table.add_columns("result", "profile", "device", "off", "on", "gain")
        self.load_runs()

    @work(thread=True, exclusive=True, group="bench-list", exit_on_error=False)
    def load_runs(self) -> None:
        runs = list_runs()
        self.app.call_from_thread(self._show_runs, runs)

    def _show_runs(self, runs: list[dict[str, Any]]) -> None:
        self.runs = runs
        table = self.query_one("#bench-runs", DataTable)
        table.clear()
        for run in reversed(runs):
            halves = {half.get("spec") == "off": half for half in run.get("halves") or []}
            off = halves.get(True, {}).get("overall_tokens_per_s")
            on_rate = halves.get(False, {}).get("overall_tokens_per_s")
            gain = (run.get("speedup") or {}).get("overall")
            table.add_row(
                str(run.get("id")),
                str(run.get("profile_name") or run.get("url")),
                str(run.get("device", ""))[:24],
                fmt_rate(off),
                fmt_rate(on_rate),
                fmt_rate(gain, 2, "x"),
                key=str(run.get("id")),
            )
        if runs and self.shown is None:
            self._show_kept(runs[-1])

    @on(DataTable.RowHighlighted, "#bench-runs")
    def _pick(self, event: DataTable.RowHighlighted) -> None:
        for run in self.runs:
            if event.row_key.value == str(run.get("id")):
                self._show_kept(run)

    def _show_kept(self, data: dict[str, Any]) -> None:
        try:
            self.show_run(BenchRun.from_json(data))
        except BenchError as error:
            self.notify(str(error), severity="warning")

    def show_run(self, run: BenchRun) -> None:
        self.shown = run
        width = max(40, self.size.width - 4)
        self.query_one("#bench-chart", Static).update(chart(run, width))
        self.query_one("#bench-table", Static).update(escape(result_table(run)))

    def on_resize(self) -> None:
        if self.shown is not None:
            self.show_run(self.shown)

    def action_run_ab(self) -> None:
        if self.running:
            self.notify("A bench is already running", severity="warning")
            return
        self.running = True
        self.run_ab()

    @work(thread=True, exclusive=True, group="bench-run", exit_on_error=False)
    def run_ab(self) -> None:
        progress = self.query_one("#bench-progress", Static)

        def say(text: str) -> None:
            self.app.call_from_thread(progress.update, escape(f"bench: {text}"))

        try:
            run = run_bench(
                self.supervisor,
                self.prompts,
                ab=self.url is None,
                url=self.url,
                ready_timeout_s=self.ready_timeout_s,
                on_progress=say,
            )
            save_run(run)
        except (BenchError, LaunchRefused, SupervisorError) as error:
            self.app.call_from_thread(self.notify, str(error), severity="error", timeout=12)
            say(f"failed: {error}")
            return
        finally:
            self.running = False
        say(f"done: kept as {run.id}")
        self.app.call_from_thread(self.show_run, run)
        self.load_runs()
