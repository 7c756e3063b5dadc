"""The engine environment: where vLLM lives and what the installed one accepts.

The panel never imports vLLM (it pins its own torch and transformers). It runs
`vllm` as a subprocess and learns what the installed version accepts by
reading its source files with `ast`, which costs milliseconds instead of the
seconds an import of vLLM takes.
"""

from __future__ import annotations

import ast
import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Fork-only TurboQuant preset names and the names upstream vLLM gave them.
FORK_KV_DTYPE_ALIASES: dict[str, str] = {
    "tq-t4nc": "turboquant_4bit_nc",
    "tq-k8v4": "turboquant_k8v4",
    "tq-k3v4nc": "turboquant_k3v4_nc",
    "tq-t3nc": "turboquant_3bit_nc",
}

# vLLM 0.33.0's list, used only when the installed source cannot be read.
KNOWN_KV_DTYPES: tuple[str, ...] = (
    "auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc",
    "fp8_ds_mla", "nvfp4_ds_mla", "turboquant_k8v4", "turboquant_4bit_nc",
    "turboquant_k3v4_nc", "turboquant_3bit_nc", "octave_k3v4", "octave_k3v3",
    "octave_k3v3_compact", "ultraquant_4bit", "int4_per_token_head",
    "int8_per_token_head", "fp8_per_token_head", "nvfp4", "nvfp4_4over6",
)  # fmt: skip


class EngineError(RuntimeError):
    """vLLM cannot be found or run; the message says how to point qtui at it."""


@dataclass(frozen=True)
class Engine:
    """How to run vLLM: `command + ["serve", ...]`, and the Python that has it."""

    command: tuple[str, ...]
    python: str | None

    def serve_argv(self, args: list[str]) -> list[str]:
        return [*self.command, "serve", *args]


def resolve_engine(spec: str) -> Engine:
    """`spec` names a `vllm` executable or a Python interpreter that has vllm."""
    found = shutil.which(spec) if os.sep not in spec else spec
    if not found or not Path(found).exists():
        raise EngineError(
            f"vLLM not found: {spec!r} is not an executable. Set QTUI_VLLM (or `vllm` in "
            "the config) to the vllm executable or a Python with vllm; `make run` builds "
            ".venv-vllm for you"
        )
    path = str(Path(found).absolute())
    if Path(path).name.startswith("python"):
        return Engine(command=(path, "-m", "vllm.entrypoints.cli.main"), python=path)
    return Engine(command=(path,), python=_shebang_python(Path(path)))


def _shebang_python(script: Path) -> str | None:
    try:
        with open(script, "rb") as handle:
            first = handle.readline(512).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    interpreter = first[2:].strip().split()[0]
    return interpreter if Path(interpreter).exists() else None


@functools.lru_cache(maxsize=8)
def vllm_package_dir(python: str) -> Path | None:
    """The installed `vllm` package directory, found without importing vllm."""
    return _package_dir(python, "vllm")


@functools.lru_cache(maxsize=16)
def _package_dir(python: str, package: str) -> Path | None:
    probe = (
        f"import importlib.util as u; s = u.find_spec({package!r}); "
        "print(list(s.submodule_search_locations)[0] if s else '')"
    )
    try:
        result = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    location = result.stdout.strip()
    return Path(location) if result.returncode == 0 and location else None


def _literal_strings(source: str, name: str) -> list[str] | None:
    """The strings of `name = Literal[...]` at module level of `source`."""
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
            continue
        value = node.value
        if isinstance(value, ast.Subscript):
            items = value.slice.elts if isinstance(value.slice, ast.Tuple) else [value.slice]
            return [
                i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)
            ]
    return None


@dataclass(frozen=True)
class EngineFacts:
    """What the installed vLLM accepts, and whether that was read or assumed."""

    version: str | None
    kv_cache_dtypes: tuple[str, ...]
    read_from_install: bool
    has_flashinfer: bool | None = None
    """FlashInfer installed beside vLLM (None: unknown). Without it Qwen3.5's Gated
    DeltaNet prefill must be told to use Triton, or vLLM tries FlashInfer's JIT kernel."""
    knows_gdn_prefill_backend: bool = False
    """The installed vLLM takes --gdn-prefill-backend."""
    hybrid_prefix_caching_default: bool = True
    """Prefix caching is on by default for hybrid (Gated DeltaNet, Mamba) models. vLLM 0.32
    turns it on ("align" mode: 2 + draft state blocks a request); 0.26 leaves it off unless
    asked (1 + draft), which the KV-cache arithmetic must follow."""

    @property
    def is_cpu_build(self) -> bool:
        return bool(self.version and "+cpu" in self.version)


@functools.lru_cache(maxsize=8)
def engine_facts(engine: Engine) -> EngineFacts:
    package = vllm_package_dir(engine.python) if engine.python else None
    if package is None:
        return EngineFacts(None, KNOWN_KV_DTYPES, read_from_install=False)
    dtypes: list[str] | None = None
    try:
        dtypes = _literal_strings((package / "config" / "cache.py").read_text(), "CacheDType")
    except (OSError, SyntaxError):
        dtypes = None
    try:
        arg_source = (package / "engine" / "arg_utils.py").read_text()
    except OSError:
        arg_source = ""
    assert engine.python is not None
    return EngineFacts(
        version=_installed_version(package),
        kv_cache_dtypes=tuple(dtypes) if dtypes else KNOWN_KV_DTYPES,
        read_from_install=bool(dtypes),
        has_flashinfer=_package_dir(engine.python, "flashinfer") is not None,
        knows_gdn_prefill_backend="gdn_prefill_backend" in arg_source,
        # 0.26: `default_prefix_caching = (... and not model_config.is_hybrid)`.
        hybrid_prefix_caching_default="not model_config.is_hybrid" not in arg_source,
    )


def _installed_version(package: Path) -> str | None:
    try:
        source = (package / "_version.py").read_text()
    except OSError:
        return None
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            if names & {"__version__", "version"} and isinstance(node.value.value, str):
                return node.value.value
    return None


def resolve_kv_cache_dtype(requested: str, accepted: tuple[str, ...]) -> tuple[str, str | None]:
    """Map a requested KV dtype onto the installed vLLM.

    Returns (dtype to pass, note for the user or None). Raises ValueError with
    the fix when the installed vLLM does not accept it.
    """
    if requested in accepted:
        return requested, None
    upstream = FORK_KV_DTYPE_ALIASES.get(requested)
    if upstream and upstream in accepted:
        return upstream, (
            f"kv_cache_dtype {requested!r} is the TurboQuant fork's name; the installed "
            f"(upstream) vLLM calls it {upstream!r}, which qtui passes instead"
        )
    hint = ""
    if upstream:
        hint = f" (the fork name for {upstream!r}, which this vLLM lacks too; fp8 is mainline's)"
    raise ValueError(
        f"kv_cache_dtype {requested!r} is not accepted by the installed vLLM{hint}; "
        f"choose one of: {', '.join(accepted)}"
    )
