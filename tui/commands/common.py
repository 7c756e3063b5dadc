"""Helpers shared by the headless commands."""

from __future__ import annotations

from backend.config import Settings, load_settings
from backend.engine import Engine, EngineError, resolve_engine
from backend.supervisor import ServerSupervisor


def settings() -> Settings:
    return load_settings()


def engine_or_none(config: Settings) -> Engine | None:
    try:
        return resolve_engine(config.vllm)
    except EngineError:
        return None


def supervisor(config: Settings | None = None, *, need_engine: bool = False) -> ServerSupervisor:
    """A supervisor for this machine's server; the engine only when starting."""
    from tui.commands.errors import CommandError

    config = config or settings()
    if need_engine:
        try:
            engine: Engine | None = resolve_engine(config.vllm)
        except EngineError as error:
            raise CommandError(str(error)) from None
    else:
        engine = engine_or_none(config)
    return ServerSupervisor(engine)
