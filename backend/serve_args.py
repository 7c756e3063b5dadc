"""Profile -> `vllm serve` argv, and every check that can fail before launch.

Checks here are cheap and local (files, sockets, the installed vLLM's source),
so a bad profile fails in milliseconds with a message naming the fix instead
of after vLLM's 20-second import.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from backend.config import ServeProfile, is_local_model, parse_gpu_list
from backend.engine import Engine, EngineFacts, engine_facts, resolve_kv_cache_dtype


class LaunchRefused(ValueError):
    """The profile cannot launch as it stands; the message names the fix."""


@dataclass
class LaunchPlan:
    """Everything needed to start the server: argv, environment, notes."""

    argv: list[str]
    env: dict[str, str]
    url: str
    notes: list[str] = field(default_factory=list)
    """Things the user should know (aliases mapped, security warnings)."""
    secret_env_names: list[str] = field(default_factory=list)
    """Env names whose values must never be shown."""
    profile: ServeProfile | None = None
    """The profile as launched (model path made absolute)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_host(host: str) -> str:
    """The address a local client uses to reach a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def port_holder(host: str, port: int) -> str | None:
    """None when `host:port` can be bound; else who holds it, as well as we can tell."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return None
        except OSError:
            pass
    try:
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN
            if conn.laddr and conn.laddr.port == port and listening and conn.pid:
                try:
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except (psutil.Error, OSError):
        pass
    return "another process"


def checkpoint_has_mtp_tensors(model_dir: Path) -> bool:
    """True when any safetensors header in `model_dir` names an `mtp.*` tensor."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            if any(name.startswith("mtp.") for name in weight_map):
                return True
        except (OSError, ValueError):
            pass
    for shard in model_dir.glob("*.safetensors"):
        if any(name.startswith("mtp.") for name in _safetensors_names(shard)):
            return True
    return False


def check_mtp_head(model_dir: Path, vllm_version: str | None) -> None:
    """Refuse MTP where this vLLM would not draft with the checkpoint's head.

    Without this, a checkpoint whose mtp.fc is absent starts and silently accepts
    nothing, and a packed one fails only after the model has loaded.
    """
    # The doctor pulls in numpy; most launches never need it.
    from backend.mtp_doctor import Verdict, diagnose_checkpoint

    report = diagnose_checkpoint(model_dir, vllm_version)
    if report.verdict is Verdict.IMPOSSIBLE:
        raise LaunchRefused(f"MTP unavailable for {model_dir}: {report.reason}; set spec off")
    if report.verdict is Verdict.FIXABLE:
        problem = report.problems[0] if report.problems else report.reason
        raise LaunchRefused(
            f"MTP would not work with {model_dir}: {problem}; run `qtui mtp patch "
            f"{model_dir}` (it backs up what it changes), or set spec off"
        )


def check_fits(profile: ServeProfile, engine: Engine) -> None:
    """Refuse a profile that vLLM would certainly reject for want of KV-cache memory.

    Only a certain prediction refuses: an exact budget (kv_cache_memory_bytes), or a
    GPU budget that falls short even with no margin held back. Anything qtui cannot
    size (a packed KV dtype, an odd checkpoint) is left for vLLM to judge.
    """
    from backend.fit import FitError, local_target, refusal

    try:
        # An exact budget needs no NVML reading.
        sample = profile.kv_cache_memory_bytes is None
        report = local_target(engine, profile.gpu_indices(), sample_gpus=sample).predict(profile)
    except FitError:
        return
    message = refusal(report)
    if message:
        raise LaunchRefused(message)


def check_gpu_selection(
    profile: ServeProfile, present: list[int], inherited: str | None = None
) -> None:
    """Refuse GPUs that are not there, or fewer GPUs than tensor x pipeline parallel needs.

    `present` are NVML's GPU indices (empty: no NVIDIA GPU here, nothing to check);
    `inherited` is a CUDA_VISIBLE_DEVICES the server would inherit when the profile
    chooses no GPUs. One that is not a plain index list (UUIDs, MIG) is left to vLLM.
    """
    if not present:
        return
    tp, pp = profile.tensor_parallel_size, profile.pipeline_parallel_size
    chosen, source = profile.gpu_indices(), "gpus"
    if chosen is None and inherited is not None:
        try:
            chosen, source = parse_gpu_list(inherited) or [], "CUDA_VISIBLE_DEVICES"
        except ValueError:
            return
    if chosen is not None:
        missing = [index for index in chosen if index not in present]
        if missing:
            raise LaunchRefused(
                f"{source} lists GPU {missing[0]}, but this machine has GPUs "
                f"{_index_list(present)}: fix {source}"
            )
    seen = len(present) if chosen is None else len(chosen)
    if tp * pp > seen:
        where = "on this machine" if chosen is None else f"in {source} ({_index_list(chosen)})"
        fix = "list more GPUs in gpus or " if chosen is not None and len(present) > seen else ""
        raise LaunchRefused(
            f"tensor_parallel_size {tp} x pipeline_parallel_size {pp} needs {tp * pp} GPUs, "
            f"but the server sees {seen} {where}: {fix}lower tensor_parallel_size"
            + (" or pipeline_parallel_size" if pp > 1 else "")
        )


def _index_list(indices: list[int]) -> str:
    return ",".join(map(str, indices)) or "none"


def _has_linear_attention(model_dir: Path) -> bool:
    """A Qwen3.5/Qwen3-Next checkpoint: Gated DeltaNet layers beside full attention."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    text = config.get("text_config") or config
    return "linear_attention" in (text.get("layer_types") or [])


def _without_flashinfer(
    profile: ServeProfile, facts: EngineFacts, model_dir: Path | None, env: dict[str, str]
) -> tuple[str, list[str]] | None:
    """On a GPU vLLM without FlashInfer, what a Gated DeltaNet model needs to start.

    vLLM then tries FlashInfer's JIT GDN prefill kernel and its FlashInfer sampler;
    Triton does both jobs (measured on the H200 with vLLM 0.26). Returns the note
    and the extra arguments; sets the sampler variable in `env`.
    """
    if facts.is_cpu_build or facts.has_flashinfer is not False or model_dir is None:
        return None
    if not _has_linear_attention(model_dir):
        return None
    env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    given = " ".join(profile.extra_args)
    if not facts.knows_gdn_prefill_backend or "--gdn-prefill-backend" in given:
        return None
    return (
        "FlashInfer is not installed: Gated DeltaNet prefill runs on Triton "
        "(--gdn-prefill-backend triton)",
        ["--gdn-prefill-backend", "triton"],
    )


def _safetensors_names(path: Path) -> list[str]:
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size <= 0 or size > 100_000_000:
                return []
            header = json.loads(handle.read(size))
    except (OSError, ValueError):
        return []
    return [name for name in header if name != "__metadata__"]


def profile_args(profile: ServeProfile, kv_cache_dtype: str) -> list[str]:
    """The `vllm serve` arguments for `profile` (no secrets: the key goes by env)."""
    p = profile
    args = [p.model, "--host", p.host, "--port", str(p.port)]

    def add(flag: str, value: object) -> None:
        if value is not None:
            args.extend([flag, str(value)])

    add("--served-model-name", p.served_model_name)
    if p.dtype != "auto":
        add("--dtype", p.dtype)
    add("--max-model-len", p.max_model_len)
    add("--gpu-memory-utilization", p.gpu_memory_utilization)
    add("--kv-cache-memory-bytes", p.kv_cache_memory_bytes)
    add("--max-num-seqs", p.max_num_seqs)
    if kv_cache_dtype != "auto":
        add("--kv-cache-dtype", kv_cache_dtype)
    spec = p.speculative.as_vllm_json()
    if spec is not None:
        add("--speculative-config", json.dumps(spec, separators=(",", ":")))
    if p.cudagraph_mode is not None:
        args.append(f"--compilation-config.cudagraph_mode={p.cudagraph_mode}")
    if p.enforce_eager:
        args.append("--enforce-eager")
    add("--reasoning-parser", p.reasoning_parser)
    add("--tool-call-parser", p.tool_call_parser)
    if p.enable_auto_tool_choice:
        args.append("--enable-auto-tool-choice")
    if p.tensor_parallel_size != 1:
        add("--tensor-parallel-size", p.tensor_parallel_size)
    if p.pipeline_parallel_size != 1:
        add("--pipeline-parallel-size", p.pipeline_parallel_size)
    add("--distributed-executor-backend", p.distributed_executor_backend)
    if p.enable_prefix_caching is True:
        args.append("--enable-prefix-caching")
    elif p.enable_prefix_caching is False:
        args.append("--no-enable-prefix-caching")
    if p.trust_remote_code:
        args.append("--trust-remote-code")
    if p.language_model_only:
        args.append("--language-model-only")
    args.extend(p.extra_args)
    return args


def check_extra_args(extra: list[str]) -> None:
    for index, arg in enumerate(extra):
        if arg == "--api-key" or arg.startswith("--api-key="):
            raise LaunchRefused(
                "--api-key on the command line is visible to every user in `ps`; "
                "put the key in an environment variable and set api_key_env instead"
            )
        if arg in ("--speculative-config", "-sc") and index + 1 < len(extra):
            _parse_spec_json(extra[index + 1])


def _parse_spec_json(text: str) -> None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise LaunchRefused(
            f"--speculative-config is not valid JSON ({error.msg} at column {error.colno}); "
            'write it like {"method": "mtp", "num_speculative_tokens": 1}'
        ) from None
    if not isinstance(value, dict) or "method" not in value:
        raise LaunchRefused('--speculative-config must be a JSON object with a "method" key')


def _checked_draft(profile: ServeProfile) -> ServeProfile:
    """draft_model / eagle3 need a draft checkpoint; a local one must exist (made absolute)."""
    spec = profile.speculative
    if spec.method not in ("draft_model", "eagle3"):
        return profile
    if not spec.draft_model:
        raise LaunchRefused(
            f"{spec.method} needs a draft checkpoint: set speculative.draft_model (e to edit)"
        )
    if not is_local_model(spec.draft_model):
        return profile  # a hub name: vLLM resolves it
    draft_path = Path(spec.draft_model).expanduser()
    if not (draft_path / "config.json").is_file():
        raise LaunchRefused(
            f"draft model {spec.draft_model} is not a checkpoint directory (no config.json): "
            "fix speculative.draft_model"
        )
    absolute = spec.model_copy(update={"draft_model": str(draft_path.resolve())})
    return profile.model_copy(update={"speculative": absolute})


def plan_launch(
    profile: ServeProfile,
    engine: Engine,
    *,
    check_port: bool = True,
    check_mtp: bool = True,
    check_fit: bool = False,
) -> LaunchPlan:
    """Validate `profile` against this machine and the installed vLLM.

    `check_mtp` runs the MTP doctor on a local checkpoint when MTP is on; turning it
    off is for those who want to see what vLLM itself does with the head.
    `check_fit` refuses a profile whose KV cache certainly cannot fit (the
    supervisor's launches turn it on; `--skip-fit-check` turns it off).
    """
    notes: list[str] = []
    model = profile.model
    model_path = Path(model).expanduser()
    looks_local = is_local_model(model)
    if looks_local:
        if not model_path.is_dir():
            raise LaunchRefused(f"model directory {model} does not exist; fix `model` or --model")
        if not (model_path / "config.json").is_file():
            raise LaunchRefused(
                f"{model} has no config.json: point `model` at the checkpoint directory itself"
            )
        model = str(model_path.resolve())
        profile = profile.model_copy(update={"model": model})
    facts = engine_facts(engine)
    if profile.speculative.method == "mtp" and looks_local and check_mtp:
        check_mtp_head(model_path, facts.version)
    profile = _checked_draft(profile)
    if profile.enable_auto_tool_choice and not profile.tool_call_parser:
        raise LaunchRefused("enable_auto_tool_choice needs tool_call_parser (e.g. qwen3_xml)")
    check_extra_args(profile.extra_args)

    try:
        kv_dtype, note = resolve_kv_cache_dtype(profile.kv_cache_dtype, facts.kv_cache_dtypes)
    except ValueError as error:
        raise LaunchRefused(str(error)) from None
    if note:
        notes.append(note)
    if check_fit and looks_local:
        check_fits(profile.model_copy(update={"kv_cache_dtype": kv_dtype}), engine)

    env: dict[str, str] = {"PYTHONUNBUFFERED": "1", "NO_COLOR": "1", **profile.env}
    if profile.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = profile.gpus
        # CUDA numbers GPUs fastest first, NVML and nvidia-smi by PCI bus: make
        # the indices the user reads in nvidia-smi (and qtui's panel) the ones used.
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if not facts.is_cpu_build:
        from backend.gpu import visible_gpu_indices

        inherited = env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
        check_gpu_selection(profile, visible_gpu_indices(), inherited)
    gdn_note = _without_flashinfer(profile, facts, model_path if looks_local else None, env)
    if gdn_note:
        profile = profile.model_copy(update={"extra_args": [*profile.extra_args, *gdn_note[1]]})
        notes.append(gdn_note[0])
    secrets: list[str] = []
    if profile.api_key_env:
        key = os.environ.get(profile.api_key_env)
        if not key:
            raise LaunchRefused(
                f"api_key_env names ${profile.api_key_env}, which is not set in this "
                "environment: export it before starting"
            )
        env["VLLM_API_KEY"] = key
        secrets.append("VLLM_API_KEY")
    if not is_loopback(profile.host):
        if not profile.api_key_env:
            raise LaunchRefused(
                f"host {profile.host} exposes the server beyond this machine without an API "
                "key: set api_key_env to a variable holding a key, or use host 127.0.0.1"
            )
        notes.append(
            f"warning: the server listens on {profile.host}: anyone who can reach this "
            "machine and has the API key can use it; /metrics and /health stay open"
        )

    if check_port:
        holder = port_holder(profile.host, profile.port)
        if holder:
            raise LaunchRefused(
                f"port {profile.port} on {profile.host} is in use by {holder}: "
                "stop it or pick another with --port"
            )
    argv = engine.serve_argv(profile_args(profile, kv_dtype))
    url = f"http://{client_host(profile.host)}:{profile.port}"
    return LaunchPlan(
        argv=argv, env=env, url=url, notes=notes, secret_env_names=secrets, profile=profile
    )


def masked_command(argv: list[str]) -> str:
    """The command line for display: values of secret-looking flags hidden."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append("****")
            hide_next = False
            continue
        if arg in ("--api-key", "--hf-token"):
            hide_next = True
        elif arg.startswith(("--api-key=", "--hf-token=")):
            arg = arg.split("=", 1)[0] + "=****"
        shown.append(arg if arg == "****" else shlex.quote(arg))
    return " ".join(shown)
