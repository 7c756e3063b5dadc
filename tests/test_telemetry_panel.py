"""TelemetryPanel in a small host App: what it shows for real scraper snapshots and samples."""

from __future__ import annotations

import re
from pathlib import Path

from textual.app import App, ComposeResult
from textual.widgets import Digits, Sparkline, Static

from backend.gpu import HOST_PIDS_NOTE, GpuReading, GpuSample
from backend.metrics import MetricsScraper, TelemetrySnapshot
from backend.telemetry_checks import Expected, TelemetryChecks
from tests.conftest import free_port
from tests.test_metrics import page
from tui.widgets import telemetry as telemetry_module
from tui.widgets.telemetry import TelemetryPanel

GIB = 1 << 30


class PanelHost(App[None]):
    def compose(self) -> ComposeResult:
        yield TelemetryPanel(id="panel")


def text_of(panel: TelemetryPanel, selector: str) -> str:
    return str(panel.query_one(selector, Static).render())


def spec_snapshot(
    checks: TelemetryChecks | None = None,
) -> tuple[MetricsScraper, TelemetrySnapshot]:
    scraper = MetricsScraper("http://127.0.0.1:9", window_s=10, checks=checks)
    scraper.ingest(page(spec=(0, 0, 0), per_pos=(0, 0)), at=0.0)
    snap = scraper.ingest(
        page(
            gen=500,
            prompt=100,
            running=3,
            waiting=1,
            kv=0.42,
            queries=100,
            hits=25,
            ttft=(1.2, 10),
            itl=(2.0, 400),
            spec=(100, 200, 90),
            per_pos=(60, 30),
        ),
        at=10.0,
    )
    return scraper, snap


def two_gpus() -> GpuSample:
    return GpuSample(
        at=0.0,
        gpus=[
            GpuReading(0, "NVIDIA H200", 71 * GIB, 140 * GIB, utilization=97.0),
            GpuReading(1, "NVIDIA H200", 139 * GIB, 140 * GIB, utilization=12.0),
        ],
    )


async def test_figures_of_a_spec_decoding_server_are_shown() -> None:
    app = PanelHost()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(TelemetryPanel)
        _, snap = spec_snapshot()
        panel.update_snapshot(snap, two_gpus())
        await pilot.pause()
        assert panel.query_one("#telemetry-tps", Digits).value == "50.0"
        gpu = text_of(panel, "#telemetry-gpu")
        assert "71/140G" in gpu and "139/140G" in gpu
        spec = text_of(panel, "#telemetry-spec")
        assert "accept 45.0%" in spec and "len 1.90" in spec
        assert "pos1" in spec and "60%" in spec and "pos2" in spec and "30%" in spec
        load = text_of(panel, "#telemetry-load")
        assert "42.0%" in load and "run 3  wait 1" in load and "prefix 25%" in load
        assert "TTFT 120 ms" in load and "ITL 5 ms" in load
        assert "prompt 10" in text_of(panel, "#telemetry-tps-label")
        assert panel.query_one("#telemetry-spec").display
        assert not panel.query_one("#telemetry-warnings").display
        # It fits the side column: 38 wide, 20 high.
        assert panel.size.width <= 38
        assert sum(child.outer_size.height for child in panel.children if child.display) <= 20


async def test_no_gpu_spec_off_and_sparkline_history() -> None:
    app = PanelHost()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(TelemetryPanel)
        scraper = MetricsScraper("http://127.0.0.1:9")
        for second in range(5):
            snap = scraper.ingest(page(gen=100 * second * second), at=float(second))
        panel.update_snapshot(
            snap, GpuSample(at=0.0, no_gpu_reason="NVML Shared Library Not Found")
        )
        await pilot.pause()
        assert "no NVIDIA GPU (NVML Shared Library Not Found)" in text_of(panel, "#telemetry-gpu")
        assert panel.has_class("-no-spec")
        assert not panel.query_one("#telemetry-spec").display
        assert list(panel.query_one("#telemetry-tps-spark", Sparkline).data or []) == [
            100.0,
            300.0,
            500.0,
            700.0,
        ]


async def test_one_sample_is_drawn_as_the_empty_baseline_not_a_full_bar() -> None:
    # Textual draws a one-value Sparkline as full blocks: an idle server's first
    # zero would look like the fastest it has been.
    app = PanelHost()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(TelemetryPanel)
        scraper = MetricsScraper("http://127.0.0.1:9")
        scraper.ingest(page(gen=0), at=0.0)
        snap = scraper.ingest(page(gen=0), at=1.0)
        assert snap.generation_tps_history == [0.0]
        panel.update_snapshot(snap, GpuSample(at=0.0, no_gpu_reason="no NVML here"))
        await pilot.pause()
        spark = panel.query_one("#telemetry-tps-spark", Sparkline)
        assert list(spark.data or []) == []
        drawn = spark.render_lines(spark.region.reset_offset)
        assert "█" not in "".join(strip.text for strip in drawn)


async def test_stale_keeps_last_figures_greyed_and_says_why() -> None:
    app = PanelHost()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(TelemetryPanel)
        scraper, snap = spec_snapshot()
        panel.update_snapshot(snap)
        scraper.url = f"http://127.0.0.1:{free_port()}"
        stale = scraper.scrape()
        panel.update_snapshot(stale)
        await pilot.pause()
        assert panel.has_class("-stale")
        assert panel.query_one("#telemetry-tps", Digits).value == "50.0"
        warnings = panel.query_one("#telemetry-warnings", Static)
        assert warnings.display and "stale: cannot reach" in str(warnings.render())
        # The GPU bars go muted too when the figures are stale.
        panel.update_gpu(two_gpus())
        assert "$success" not in gpu_markup(panel)
        panel.update_snapshot(snap)
        assert not panel.has_class("-stale")


def gpu_markup(panel: TelemetryPanel) -> str:
    return str(panel.query_one("#telemetry-gpu", Static).content)


async def test_warnings_are_shown_capped_with_the_whole_text_in_the_tooltip() -> None:
    app = PanelHost()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(TelemetryPanel)
        scraper = MetricsScraper("http://x", checks=TelemetryChecks(Expected("mtp", "auto")))
        scraper.ingest(page(spec=(0, 0, 0)), at=0.0)
        dead = scraper.ingest(page(gen=300, spec=(300, 600, 0)), at=10.0)
        panel.update_snapshot(dead)
        await pilot.pause()
        warnings = panel.query_one("#telemetry-warnings", Static)
        assert warnings.display
        assert "MTP is on but accepts almost nothing" in str(warnings.render())
        assert "qtui mtp inspect" in str(warnings.tooltip)
        assert warnings.outer_size.height <= 4


async def test_no_server_resets_the_panel() -> None:
    app = PanelHost()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(TelemetryPanel)
        panel.update_snapshot(None)
        await pilot.pause()
        assert "no server" in text_of(panel, "#telemetry-warnings")


def test_colours_come_only_from_theme_variables() -> None:
    source = Path(telemetry_module.__file__).read_text()
    assert not re.search(r"#[0-9a-fA-F]{6}\b|#[0-9a-fA-F]{3}\b|rgb\(", source)


def tensor_parallel_sample(note: str | None = None) -> GpuSample:
    """Two H200s, a TP-2 server holding 70 and 66 GiB (or NVML could not say: `note`)."""
    held = (0, 0) if note else (70 * GIB, 66 * GIB)
    return GpuSample(
        at=0.0,
        gpus=[
            GpuReading(0, "NVIDIA H200", 72 * GIB, 140 * GIB, 97.0, 61.0, 412.4, 700.0, held[0]),
            GpuReading(1, "NVIDIA H200", 68 * GIB, 140 * GIB, 88.0, 57.0, 389.6, 700.0, held[1]),
        ],
        server_pids=[4242],
        server_memory_note=note,
    )


async def test_every_gpu_and_the_server_summed_over_them() -> None:
    app = PanelHost()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(TelemetryPanel)
        _, snap = spec_snapshot()
        panel.update_snapshot(snap, tensor_parallel_sample())
        await pilot.pause()
        rows = text_of(panel, "#telemetry-gpu").splitlines()
        assert rows[0].startswith("0 ") and rows[0].endswith(" 72/140G 97% 61C 412W")
        assert rows[1].startswith("1 ") and rows[1].endswith(" 68/140G 88% 57C 390W")
        assert rows[2] == "server 136.0G = 70.0G + 66.0G"
        assert len(rows) == 3
        # Each row fits the column on one line; the panel stays 38 x 20.
        gpu = panel.query_one("#telemetry-gpu", Static)
        assert gpu.outer_size.height == 3
        assert panel.size.width <= 38
        assert sum(child.outer_size.height for child in panel.children if child.display) <= 20


async def test_container_shows_gpu_totals_and_why_the_server_figure_is_missing() -> None:
    app = PanelHost()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(TelemetryPanel)
        _, snap = spec_snapshot()
        panel.update_snapshot(snap, tensor_parallel_sample(HOST_PIDS_NOTE))
        await pilot.pause()
        text = text_of(panel, "#telemetry-gpu")
        assert "all GPUs 140/280G  server ?" in text
        assert "NVML reports host PIDs (container?)" in " ".join(text.split())
        assert "server 0" not in text and "0.0G" not in text
        assert sum(child.outer_size.height for child in panel.children if child.display) <= 20


async def test_no_server_line_without_a_server() -> None:
    app = PanelHost()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(TelemetryPanel)
        panel.update_gpu(two_gpus())
        await pilot.pause()
        assert "server" not in text_of(panel, "#telemetry-gpu")
