"""Messages the App's long-lived workers post; screens react to them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from backend.endpoint import Endpoint
    from backend.gpu import GpuSample
    from backend.metrics import TelemetrySnapshot
    from backend.server_state import ServerStatus
    from backend.telemetry_checks import StartupReadout


class ServerStatusPolled(Message):
    """A fresh view of the server (phase, record), about once a second."""

    def __init__(
        self, status: ServerStatus, endpoint: Endpoint | None = None, served: str = ""
    ) -> None:
        super().__init__()
        self.status = status
        self.endpoint = endpoint
        """Which server was polled: None for qtui's own."""
        self.served = served

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ServerStatusPolled)


class ServerLogLines(Message):
    """New lines of the server log (cleaned); `reset` when a new log began.

    A reset carries the startup readout read from the log's beginning, which a
    long-running server's tail no longer holds.
    """

    def __init__(
        self, lines: list[str], reset: bool = False, readout: StartupReadout | None = None
    ) -> None:
        super().__init__()
        self.lines = lines
        self.reset = reset
        self.readout = readout


class TelemetrySampled(Message):
    """A GPU sample and the windowed server figures (None when no server runs)."""

    def __init__(self, snapshot: TelemetrySnapshot | None, gpu: GpuSample | None) -> None:
        super().__init__()
        self.snapshot = snapshot
        self.gpu = gpu

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TelemetrySampled)
