"""The telemetry panel: GPU memory, tok/s, draft acceptance, KV use, latency, warnings.

It only renders: the App's workers poll (GpuSampler, MetricsScraper) and hand
each result to `update_snapshot` / `update_gpu`. Updating changes a few Statics
and two Sparklines, so a 1 Hz refresh never makes typing lag. Sized for a side
column of about 38 x 20 cells. Colours come from theme variables only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.widgets import Digits, Sparkline, Static

from backend.gpu import GpuReading, GpuSample, no_gpu_text

if TYPE_CHECKING:
    from backend.metrics import TelemetrySnapshot
    from backend.speed_ledger import SpeedComparison

GIB = 1 << 30
MAX_GPU_ROWS = 4
MAX_POSITION_ROWS = 3
BAR_CELLS = 12


def level_colour(fraction: float) -> str:
    """$success below 80 %, $warning below 95 %, $error above: for memory and KV bars."""
    if fraction >= 0.95:
        return "$error"
    if fraction >= 0.80:
        return "$warning"
    return "$success"


def bar(fraction: float, colour: str, cells: int = BAR_CELLS) -> str:
    """A text bar in Content markup: filled cells in `colour`, the rest muted."""
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * cells)
    return f"[{colour}]{'█' * filled}[/][$text-muted]{'░' * (cells - filled)}[/]"


def window_label(seconds: float) -> str:
    """Whole seconds while the window fills, then to 5 s (steady, it jitters around 10)."""
    return f"{seconds:.0f}s" if seconds < 5 else f"{5 * round(seconds / 5)}s"


def _percent(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _gib(value: int) -> str:
    return f"{value / GIB:.1f}G"


def _flat(values: list[float]) -> bool:
    """Every point the same (or none): a sparkline of it is one flat line."""
    return len(set(values)) <= 1


def gpu_row(reading: GpuReading, colour: str) -> str:
    """`0 ██████░░░░ 71/140G 97% 55C 310W`: memory bar, util, temperature, power."""
    row = (
        f"{reading.index} {bar(reading.memory_fraction, colour, 10)} "
        f"{reading.memory_used / GIB:.0f}/{reading.memory_total / GIB:.0f}G"
    )
    if reading.utilization is not None:
        row += f" {reading.utilization:.0f}%"
    if reading.temperature_c is not None:
        row += f" {reading.temperature_c:.0f}C"
    if reading.power_w is not None:
        row += f" {reading.power_w:.0f}W"
    return row


def server_gpu_line(sample: GpuSample) -> str | None:
    """What the server holds, summed over GPUs (and per GPU when several hold some);
    the GPU totals and the reason when NVML cannot tell; None when no server is up."""
    if not sample.server_pids:
        return None
    total = sample.server_memory
    if total is None:
        return (
            f"all GPUs {sample.memory_used / GIB:.0f}/{sample.memory_total / GIB:.0f}G"
            f"  server ?\n[$text-muted]{escape(sample.server_memory_note or '')}[/]"
        )
    holding = [reading for reading in sample.gpus if reading.server_memory]
    line = f"server [b]{_gib(total)}[/]"
    if len(holding) == 2:
        first, second = (_gib(reading.server_memory) for reading in holding)
        line += f" [$text-muted]= {first} + {second}[/]"
    elif len(holding) > 2:
        line += f" [$text-muted]on {len(holding)} GPUs[/]"
    return line


def gpu_lines(sample: GpuSample | None, muted: bool = False) -> str:
    """One row per GPU (memory bar, util, temperature, power), then the server's
    GPU memory; or the reason there is no GPU."""
    if sample is None:
        return "[$text-muted]GPU: waiting for the first sample[/]"
    if not sample.has_gpu:
        return f"[$text-muted]{escape(no_gpu_text(sample.no_gpu_reason or 'NVML unavailable'))}[/]"
    lines = []
    for reading in sample.gpus[:MAX_GPU_ROWS]:
        colour = "$text-muted" if muted else level_colour(reading.memory_fraction)
        lines.append(gpu_row(reading, colour))
    if len(sample.gpus) > MAX_GPU_ROWS:
        lines.append(f"[$text-muted]+{len(sample.gpus) - MAX_GPU_ROWS} more GPUs[/]")
    server = server_gpu_line(sample)
    if server is not None:
        lines.append(server)
    return "\n".join(lines)


def spec_lines(snap: TelemetrySnapshot, muted: bool = False) -> str:
    """Acceptance, mean length and one bar per draft position: over the window while
    drafts are being made, else since the server started (so an idle server keeps them)."""
    run = snap.spec_run
    if snap.drafts:
        rate, length, positions = (
            snap.acceptance_rate,
            snap.mean_acceptance_length,
            snap.per_position_acceptance,
        )
        source = ""
    elif run is not None and run.drafts:
        rate, length, positions = (
            run.acceptance_rate,
            run.mean_acceptance_length,
            run.per_position_acceptance,
        )
        source = " [$text-muted](idle: run)[/]"
    else:
        rate, length, positions, source = None, None, [], ""
    shown_length = "-" if length is None else f"{length:.2f}"
    lines = [f"accept [b]{_percent(rate, 1)}[/]  len [b]{shown_length}[/]{source}"]
    for position, position_rate in enumerate(positions[:MAX_POSITION_ROWS]):
        colour = "$text-muted" if muted else "$accent"
        lines.append(f" pos{position + 1} {bar(position_rate, colour)} {_percent(position_rate)}")
    if len(positions) > MAX_POSITION_ROWS:
        lines.append(f"[$text-muted] +{len(positions) - MAX_POSITION_ROWS} positions[/]")
    if run is not None:
        overall = "" if run.acceptance_rate is None else f" {_percent(run.acceptance_rate, 1)}"
        lines.append(f"[$text-muted]{run.drafts:,.0f} drafts since start{overall}[/]")
    return "\n".join(lines)


def load_lines(snap: TelemetrySnapshot, muted: bool = False) -> str:
    """KV-cache bar, queue, prefix hits, TTFT/ITL."""
    kv = snap.kv_cache_usage
    colour = "$text-muted" if muted or kv is None else level_colour(kv)
    run = "-" if snap.running is None else str(snap.running)
    wait = "-" if snap.waiting is None else str(snap.waiting)
    return "\n".join(
        (
            f"KV {bar(kv or 0.0, colour)} {_percent(kv, 1)}",
            f"run {run}  wait {wait}  prefix {_percent(snap.prefix_cache_hit_rate)}",
            f"TTFT {_ms(snap.ttft_mean_s)}  ITL {_ms(snap.itl_mean_s)}",
        )
    )


def speed_lines(speed: SpeedComparison | None) -> str:
    """Spec on vs off from the user's own chat replies (backend.speed_ledger)."""
    if speed is None:
        return ""
    off = speed.settings.get("off")
    if speed.speedup is not None and off is not None:
        on = speed.settings[speed.running]
        return (
            f"gain [b]{speed.speedup:.2f}x[/] {escape(speed.running)} vs off\n"
            f"[$text-muted]{on.median_tps:.1f} vs {off.median_tps:.1f} tok/s, "
            f"{on.replies}+{off.replies} replies[/]"
        )
    timed = ", ".join(f"{escape(s.label)} {s.median_tps:.1f}" for s in speed.settings.values())
    missing = "on" if speed.running == "off" else "off"
    return (
        f"[$text-muted]gain -  chat with spec {missing} (m) too"
        + (f"\ntimed: {timed} tok/s" if timed else "")
        + "[/]"
    )


class TelemetryPanel(Vertical):
    """Live figures of one server. Feed it with `update_snapshot` and `update_gpu`."""

    DEFAULT_CSS = """
    TelemetryPanel {
        width: 38;
        height: auto;
        max-height: 20;
        padding: 0 1;
    }
    TelemetryPanel Static { width: 1fr; height: auto; }
    TelemetryPanel #telemetry-tps-row { height: 3; }
    TelemetryPanel #telemetry-tps { width: auto; max-width: 22; color: $success; }
    TelemetryPanel #telemetry-tps-label { width: 1fr; padding-left: 1; color: $text-muted; }
    TelemetryPanel Sparkline { height: 2; margin-bottom: 0; }
    TelemetryPanel #telemetry-accept-spark { height: 1; }
    TelemetryPanel Sparkline > .sparkline--max-color { color: $success; }
    TelemetryPanel Sparkline > .sparkline--min-color { color: $success 30%; }
    TelemetryPanel #telemetry-warnings { color: $warning; max-height: 4; }
    TelemetryPanel.-no-spec #telemetry-spec, TelemetryPanel.-no-spec #telemetry-accept-spark {
        display: none;
    }
    TelemetryPanel.-stale, TelemetryPanel.-stale #telemetry-tps { color: $text-muted; }
    TelemetryPanel.-stale Sparkline > .sparkline--max-color { color: $text-muted; }
    TelemetryPanel.-stale Sparkline > .sparkline--min-color { color: $text-muted 50%; }
    TelemetryPanel.-stale #telemetry-warnings { color: $error; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.snapshot: TelemetrySnapshot | None = None
        """The figures on screen (the last one given)."""
        self.gpu_sample: GpuSample | None = None
        self.behind = False
        """A sample arrived while this panel was not on screen."""
        self._shown: dict[str, str] = {}
        """What each Static shows now: an update with the same words is skipped."""

    def _show(self, selector: str, text: str) -> None:
        # Updating a Static relayouts it and repaints the column: once a second for
        # figures that did not move was most of an idle panel's CPU.
        if self._shown.get(selector) != text:
            self._shown[selector] = text
            widget = self.query_one(selector)
            assert isinstance(widget, Static | Digits)
            widget.update(text)

    def _spark(self, selector: str, history: list[float]) -> None:
        # An idle server adds a zero each poll: a line that stays flat draws the same.
        # Textual draws a single value as a full block (a server that has served
        # nothing would look flat out): one sample shows as the empty baseline.
        if len(history) < 2:
            history = []
        sparkline = self.query_one(selector, Sparkline)
        shown = list(sparkline.data or [])
        if history != shown and not (_flat(history) and _flat(shown) and history[:1] == shown[:1]):
            sparkline.data = list(history)

    def compose(self) -> ComposeResult:
        yield Static(gpu_lines(None), id="telemetry-gpu")
        with Horizontal(id="telemetry-tps-row"):
            yield Digits("-", id="telemetry-tps")
            yield Static("tok/s\nprompt -\nwindow -", id="telemetry-tps-label")
        yield Sparkline([], id="telemetry-tps-spark")
        yield Static("", id="telemetry-spec")
        yield Sparkline([], id="telemetry-accept-spark")
        yield Static("", id="telemetry-speed")
        yield Static("", id="telemetry-load")
        yield Static("[$text-muted]waiting for /metrics[/]", id="telemetry-warnings")

    def on_mount(self) -> None:
        self.add_class("-no-spec")
        self.query_one("#telemetry-speed", Static).display = False

    def update_speed(self, speed: SpeedComparison | None) -> None:
        """Show how the running spec setting compares with spec off (None hides it)."""
        widget = self.query_one("#telemetry-speed", Static)
        self._show("#telemetry-speed", speed_lines(speed))
        widget.display = speed is not None

    def update_gpu(self, sample: GpuSample | None) -> None:
        """Show a GPU sample (the App's GPU worker calls this)."""
        self.gpu_sample = sample
        stale = self.snapshot.stale if self.snapshot else False
        self._show("#telemetry-gpu", gpu_lines(sample, muted=stale))

    def update_snapshot(
        self, snapshot: TelemetrySnapshot | None, gpu_sample: GpuSample | None = None
    ) -> None:
        """Show the scraper's figures (and a GPU sample, when given)."""
        self.snapshot = snapshot
        if gpu_sample is not None or self.gpu_sample is not None:
            self.update_gpu(gpu_sample if gpu_sample is not None else self.gpu_sample)
        warnings = self.query_one("#telemetry-warnings", Static)
        if snapshot is None:
            self.set_class(False, "-stale")
            self._show("#telemetry-warnings", "[$text-muted]no server[/]")
            warnings.display = True
            return
        stale = snapshot.stale
        self.set_class(stale, "-stale")
        self.set_class(not snapshot.spec_decode, "-no-spec")
        tps = snapshot.generation_tps
        self._show("#telemetry-tps", "-" if tps is None else f"{tps:.1f}")
        prompt = "-" if snapshot.prompt_tps is None else f"{snapshot.prompt_tps:.0f}"
        # To 5 s: the window's true span jitters around 10 s from poll to poll, and a
        # label that changes relayouts the whole screen once a second.
        window = "-" if snapshot.window_s is None else window_label(snapshot.window_s)
        self._show("#telemetry-tps-label", f"tok/s\nprompt {prompt}\nwindow {window}")
        self._spark("#telemetry-tps-spark", snapshot.generation_tps_history)
        self._show("#telemetry-spec", spec_lines(snapshot, muted=stale))
        self._spark("#telemetry-accept-spark", snapshot.acceptance_history)
        self._show("#telemetry-load", load_lines(snapshot, muted=stale))
        notes = [f"stale: {snapshot.error}"] if stale and snapshot.error else []
        notes.extend(snapshot.warnings)
        self._show("#telemetry-warnings", "\n".join(f"⚠ {escape(note)}" for note in notes))
        # Four rows at most in the column; the whole text is in the tooltip.
        warnings.tooltip = "\n\n".join(notes) or None
        warnings.display = bool(notes)
