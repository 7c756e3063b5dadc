"""The serve-profile field table, and the pure parsing behind the profile editor.

Every setting the editor shows is described once, in SECTIONS: its key,
label, kind of control, how its text parses, how a profile value shows, and
when it is visible. The form builds its controls from the table, reading
and validation go through it, and the command preview follows from the
profile it yields.

Nothing here touches a widget: the form hands in raw control values (strings,
booleans) and gets back a `ServeProfile` or a message per field, so the rules
are the same whether a value came from a keypress or a test.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from backend.config import SPEC_METHODS, ServeProfile, is_local_model, parse_gpu_list
from backend.engine import FORK_KV_DTYPE_ALIASES, Engine, resolve_kv_cache_dtype
from backend.serve_args import (
    LaunchRefused,
    check_extra_args,
    checkpoint_has_mtp_tensors,
    is_loopback,
    masked_command,
    plan_launch,
    profile_args,
)

FieldKind = Literal["text", "int", "float", "select", "switch", "lines"]

DEFAULT_CHOICE = ""
"""Select value meaning "leave it to vLLM" (the profile holds None)."""

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# vLLM's human_readable_int(_or_auto): 1k = 1000, 1K = 1024, decimals only with k/m/g/t.
HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?[kmgt]|\d+[KMGT])")
MAX_TOKENS_PER_STEP = 16


# -- one control's text -> a profile value ------------------------------------
class FieldProblem(ValueError):
    """A value cannot be used; the message says what would be accepted."""


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _int(raw: str, low: int, high: int | None = None, *, optional: bool) -> int | None:
    text = raw.strip()
    if not text:
        if optional:
            return None
        raise FieldProblem("required: a whole number")
    try:
        number = int(text)
    except ValueError:
        raise FieldProblem(f"{text!r} is not a whole number") from None
    if number < low or (high is not None and number > high):
        span = f"{low}-{high}" if high is not None else f"at least {low}"
        raise FieldProblem(f"{number} is out of range: {span}")
    return number


def parse_memory_share(raw: str) -> float | None:
    text = raw.strip()
    if not text:
        return None
    try:
        share = float(text)
    except ValueError:
        raise FieldProblem(f"{text!r} is not a number: write e.g. 0.9") from None
    if not 0 < share <= 1:
        raise FieldProblem(f"{share} is a fraction of GPU memory: above 0, at most 1 (e.g. 0.9)")
    return share


def parse_max_model_len(raw: str) -> int | str | None:
    """Ints stay ints; vLLM's own forms (1k, 25.6k, 2K, auto, -1) pass through as text."""
    text = raw.strip()
    if not text:
        return None
    if text.lower() == "auto":
        return "auto"
    if text == "-1":
        return -1
    if text.isdigit():
        if int(text) < 1:
            raise FieldProblem("the context length must be at least 1")
        return int(text)
    if HUMAN_INT.fullmatch(text):
        return text
    if re.fullmatch(r"\d+\.\d+[KMGT]", text):
        raise FieldProblem(f"vLLM allows decimals only with k/m/g/t: did you mean {text.lower()}?")
    raise FieldProblem(f"{text!r}: write a number, 1k (=1000), 1K (=1024), 25.6k, or auto")


def parse_env_lines(raw: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for number, line in enumerate(raw.splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not ENV_NAME.fullmatch(name):
            raise FieldProblem(f"line {number}: write KEY=VALUE (got {text[:30]!r})")
        if name == "VLLM_API_KEY":
            raise FieldProblem(
                "no API key in a profile (it is a plain file): export it and name "
                "the variable in API key variable"
            )
        env[name] = value.strip()
    return env


def parse_extra_args(raw: str) -> list[str]:
    try:
        args = shlex.split(raw)
    except ValueError as error:
        raise FieldProblem(f"cannot split like a shell: {error}") from None
    try:
        check_extra_args(args)
    except LaunchRefused as error:
        raise FieldProblem(str(error)) from None
    return args


def parse_gpus(raw: str) -> str | None:
    try:
        indices = parse_gpu_list(raw)
    except ValueError as error:
        raise FieldProblem(str(error)) from None
    return None if indices is None else ",".join(map(str, indices))


def parse_env_name(raw: str) -> str | None:
    text = raw.strip()
    if not text:
        return None
    if text.startswith("$"):
        text = text[1:]
    if not ENV_NAME.fullmatch(text):
        raise FieldProblem(
            "the NAME of an environment variable (e.g. QTUI_API_KEY), not the key itself"
        )
    return text


def model_location_problem(model: str) -> str | None:
    """Why `model` cannot be loaded as a local checkpoint; None when it can (or is a hub id)."""
    if not is_local_model(model):
        return None
    path = Path(model).expanduser()
    if not path.is_dir():
        return f"no directory {model}"
    if not (path / "config.json").is_file():
        return "no config.json there: point at the checkpoint directory itself"
    return None


def parse_model(raw: str) -> str:
    text = raw.strip()
    if not text:
        raise FieldProblem("required: a checkpoint directory or hub id")
    problem = model_location_problem(text)
    if problem:
        raise FieldProblem(problem)
    return text


def parse_host(raw: str) -> str:
    text = raw.strip()
    if not text:
        raise FieldProblem("required: 127.0.0.1 keeps the server on this machine")
    return text


def whole(low: int, high: int | None = None, *, optional: bool) -> Callable[[str], int | None]:
    """A parser of whole numbers from `low` to `high`; empty is None when `optional`."""
    return partial(_int, low=low, high=high, optional=optional)


def parse_on_off(raw: str) -> bool | None:
    return None if raw == DEFAULT_CHOICE else raw == "on"


# -- a profile value -> its control's text ---------------------------------------
def show_value(value: Any) -> str:
    return DEFAULT_CHOICE if value is None else str(value)


def show_on_off(value: bool | None) -> str:
    return DEFAULT_CHOICE if value is None else ("on" if value else "off")


def show_env(env: dict[str, str]) -> str:
    return "\n".join(f"{name}={value}" for name, value in env.items())


def show_args(args: list[str]) -> str:
    return shlex.join(args)


# -- when a field is visible, by the speculative method chosen now ----------------
def always(method: str) -> bool:
    return True


def ngram_only(method: str) -> bool:
    return method == "ngram"


def with_draft_model(method: str) -> bool:
    return method in ("draft_model", "eagle3")


def spec_on(method: str) -> bool:
    return method != "off"


# -- the field table ----------------------------------------------------------------
@dataclass(frozen=True)
class FieldSpec:
    """One control of the form: which profile setting, how it is edited and read."""

    key: str
    """Profile attribute; `speculative.x` for the nested spec settings."""
    label: str
    kind: FieldKind
    help: str
    placeholder: str = ""
    options: tuple[tuple[str, str], ...] = ()
    """(label, value) pairs of a Select."""
    engine_options: bool = False
    """A Select whose options are what the installed vLLM accepts (the KV-cache dtypes)."""
    parse: Callable[[str], Any] = _optional_text
    """The control's text -> the profile value; FieldProblem says what is wrong.
    A switch is read as its state instead."""
    show: Callable[[Any], str] = show_value
    """The profile value -> the control's text (a switch shows its state instead)."""
    visible_when: Callable[[str], bool] = always
    """Given the speculative method chosen now: does the field mean anything (else hidden)?"""

    @property
    def slug(self) -> str:
        return self.key.replace(".", "-").replace("_", "-")


def _choices(*values: str) -> tuple[tuple[str, str], ...]:
    return tuple((value, value) for value in values)


VLLM_DEFAULT = ("vLLM default", DEFAULT_CHOICE)
optional_count = whole(1, optional=True)

SECTIONS: tuple[tuple[str, tuple[FieldSpec, ...]], ...] = (
    ("Model", (
        FieldSpec("model", "Model", "text", "Checkpoint directory (with config.json) or hub id",
                  placeholder="/path/to/checkpoint", parse=parse_model),
        FieldSpec("served_model_name", "Served name", "text",
                  "Name clients send as `model`; empty = the model path",
                  placeholder="(model path)"),
        FieldSpec("dtype", "Weights dtype", "select", "Activation/weight dtype",
                  options=_choices("auto", "half", "float16", "bfloat16", "float", "float32")),
        FieldSpec("trust_remote_code", "Trust remote code", "switch",
                  "Run the checkpoint's own Python (needed by some architectures)"),
        FieldSpec("language_model_only", "Language model only", "switch",
                  "Skip a multimodal model's vision tower"),
    )),
    ("Network", (
        FieldSpec("host", "Host", "text", "Bind address; anything but loopback needs an API key",
                  placeholder="127.0.0.1", parse=parse_host),
        FieldSpec("port", "Port", "int", "TCP port, 1-65535",
                  parse=whole(1, 65535, optional=False)),
        FieldSpec("api_key_env", "API key variable", "text",
                  "NAME of the environment variable holding the key, never the key",
                  placeholder="(no key)", parse=parse_env_name),
    )),
    ("Memory and context", (
        FieldSpec("max_model_len", "Max model len", "text",
                  "Context length: 4096, 1k (=1000), 1K (=1024), 25.6k, auto or -1",
                  placeholder="(vLLM default)", parse=parse_max_model_len),
        FieldSpec("gpu_memory_utilization", "GPU memory share", "float",
                  "Fraction of GPU memory vLLM may use, above 0 and at most 1",
                  placeholder="(vLLM default)", parse=parse_memory_share),
        FieldSpec("kv_cache_memory_bytes", "KV cache bytes", "int",
                  "Fixed KV-cache size in bytes; overrides the memory share",
                  placeholder="(sized by memory share)", parse=optional_count),
        FieldSpec("max_num_seqs", "Max sequences", "int", "Concurrent sequences per step",
                  placeholder="(vLLM default)", parse=optional_count),
        FieldSpec("kv_cache_dtype", "KV cache dtype", "select",
                  "Checked against what the installed vLLM accepts", engine_options=True),
        FieldSpec("enable_prefix_caching", "Prefix caching", "select",
                  "Reuse KV blocks of shared prompt prefixes",
                  options=(VLLM_DEFAULT, ("on", "on"), ("off", "off")),
                  parse=parse_on_off, show=show_on_off),
    )),
    ("Speculative decoding", (
        FieldSpec("speculative.method", "Spec method", "select",
                  "Drafter used now; off launches without --speculative-config",
                  options=_choices(*SPEC_METHODS)),
        FieldSpec("speculative.num_speculative_tokens", "Draft tokens", "int",
                  f"Draft tokens per step, 1-{MAX_TOKENS_PER_STEP}",
                  parse=whole(1, MAX_TOKENS_PER_STEP, optional=False), visible_when=spec_on),
        FieldSpec("speculative.prompt_lookup_min", "Lookup min (ngram)", "int",
                  "Shortest prompt match ngram looks up", placeholder="(vLLM default)",
                  parse=optional_count, visible_when=ngram_only),
        FieldSpec("speculative.prompt_lookup_max", "Lookup max (ngram)", "int",
                  "Longest prompt match ngram looks up", placeholder="(vLLM default)",
                  parse=optional_count, visible_when=ngram_only),
        FieldSpec("speculative.draft_model", "Draft model", "text",
                  "Draft checkpoint for draft_model / eagle3", placeholder="/path/to/draft",
                  visible_when=with_draft_model),
        FieldSpec("speculative.toggle_method", "m switches to", "select",
                  "What the one-key toggle (m) turns on",
                  options=_choices(*(m for m in SPEC_METHODS if m != "off"))),
    )),
    ("Execution", (
        FieldSpec("enforce_eager", "Enforce eager", "switch",
                  "No CUDA graphs: slower, starts faster, less memory"),
        FieldSpec("cudagraph_mode", "CUDA graph mode", "select",
                  "--compilation-config.cudagraph_mode",
                  options=(VLLM_DEFAULT, *_choices(
                      "NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE"))),
        FieldSpec("tensor_parallel_size", "Tensor parallel", "int", "GPUs per pipeline stage",
                  parse=whole(1, optional=False)),
        FieldSpec("pipeline_parallel_size", "Pipeline parallel", "int", "Pipeline stages",
                  parse=whole(1, optional=False)),
        FieldSpec("gpus", "GPUs", "text",
                  "GPU indices as nvidia-smi numbers them, e.g. 0,1 (CUDA_VISIBLE_DEVICES); "
                  "at least tensor x pipeline parallel of them", placeholder="(all visible)",
                  parse=parse_gpus),
        FieldSpec("distributed_executor_backend", "Executor backend", "select",
                  "How workers run (uni = in one process)",
                  options=(VLLM_DEFAULT, *_choices("mp", "ray", "uni", "external_launcher"))),
    )),
    ("Tools and reasoning", (
        FieldSpec("reasoning_parser", "Reasoning parser", "text", "e.g. qwen3",
                  placeholder="(none)"),
        FieldSpec("tool_call_parser", "Tool call parser", "text", "e.g. qwen3_xml",
                  placeholder="(none)"),
        FieldSpec("enable_auto_tool_choice", "Auto tool choice", "switch",
                  "Let the model decide to call tools (needs a tool call parser)"),
    )),
    ("Environment and extra arguments", (
        FieldSpec("env", "Environment", "lines",
                  "KEY=VALUE per line for the server process; no secrets here",
                  parse=parse_env_lines, show=show_env),
        FieldSpec("extra_args", "Extra arguments", "text",
                  "Further `vllm serve` arguments, shell-quoted",
                  placeholder="(none) e.g. --seed 0", parse=parse_extra_args, show=show_args),
    )),
)  # fmt: skip

FIELDS: dict[str, FieldSpec] = {spec.key: spec for _, specs in SECTIONS for spec in specs}


def field_label(key: str) -> str:
    """The label a message names a field by (a key the table lacks names itself)."""
    return FIELDS[key].label if key in FIELDS else key


def visible_keys(method: str) -> set[str]:
    """Fields that mean something for this spec method (the others are hidden)."""
    return {key for key, spec in FIELDS.items() if spec.visible_when(method)}


# -- profile <-> control values ----------------------------------------------------
def _get(profile: ServeProfile, key: str) -> Any:
    target: Any = profile
    for part in key.split("."):
        target = getattr(target, part)
    return target


def control_values(profile: ServeProfile) -> dict[str, str | bool]:
    """What each control shows for `profile`."""
    values: dict[str, str | bool] = {}
    for key, spec in FIELDS.items():
        value = _get(profile, key)
        values[key] = bool(value) if spec.kind == "switch" else spec.show(value)
    return values


@dataclass
class FormReading:
    """The form's values read as a profile, with what is wrong or worth knowing."""

    profile: ServeProfile | None
    """None while any field has an error."""
    errors: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    """Neutral explanations (fork KV-dtype names, hub ids)."""


def _parse_one(spec: FieldSpec, raw: str | bool) -> Any:
    return bool(raw) if spec.kind == "switch" else spec.parse(str(raw))


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    target = data
    *parents, last = key.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


def read_profile(
    values: dict[str, str | bool], base: ServeProfile, kv_dtypes: tuple[str, ...]
) -> FormReading:
    """Turn the controls' raw values into a profile, naming every problem by field."""
    reading = FormReading(profile=None)
    data = base.model_dump()
    shown = visible_keys(str(values.get("speculative.method", base.speculative.method)))
    for key, spec in FIELDS.items():
        if key not in values:
            continue
        try:
            _set(data, key, _parse_one(spec, values[key]))
        except FieldProblem as problem:
            if key in shown:  # a hidden field keeps its saved value
                reading.errors[key] = str(problem)
    _cross_checks(data, reading, kv_dtypes)
    if reading.errors:
        return reading
    try:
        reading.profile = ServeProfile.model_validate(data)
    except ValidationError as error:
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            reading.errors[key if key in FIELDS else "model"] = item["msg"]
    return reading


def kv_dtype_note(requested: str, accepted: tuple[str, ...]) -> str | None:
    """Explain the TurboQuant fork's preset names where they matter."""
    if requested in FORK_KV_DTYPE_ALIASES:
        try:
            _, note = resolve_kv_cache_dtype(requested, accepted)
        except ValueError:
            return None  # the error says it
        return note
    for fork_name, upstream in FORK_KV_DTYPE_ALIASES.items():
        if requested == upstream:
            return f"the TurboQuant fork and its model cards call this {fork_name!r}"
    return None


def _cross_checks(data: dict[str, Any], reading: FormReading, kv_dtypes: tuple[str, ...]) -> None:
    errors, warnings, notes = reading.errors, reading.warnings, reading.notes
    spec = data["speculative"]
    low, high = spec.get("prompt_lookup_min"), spec.get("prompt_lookup_max")
    if spec["method"] == "ngram" and low is not None and high is not None and low > high:
        errors["speculative.prompt_lookup_min"] = f"larger than lookup max ({high})"
    if spec["method"] in ("draft_model", "eagle3") and not spec.get("draft_model"):
        errors["speculative.draft_model"] = f"{spec['method']} needs a draft checkpoint"
    model = data.get("model")
    if (
        spec["method"] == "mtp"
        and "model" not in errors
        and isinstance(model, str)
        and Path(model).expanduser().is_dir()
        and not checkpoint_has_mtp_tensors(Path(model).expanduser())
    ):
        warnings["speculative.method"] = (
            "this checkpoint has no mtp.* tensors: MTP will be refused (run `qtui mtp inspect`)"
        )
    if data.get("gpus") and "CUDA_VISIBLE_DEVICES" in (data.get("env") or {}):
        errors["gpus"] = "env sets CUDA_VISIBLE_DEVICES too: keep one (drop the env entry)"
    if data["enable_auto_tool_choice"] and not data.get("tool_call_parser"):
        errors["enable_auto_tool_choice"] = "needs a tool call parser (e.g. qwen3_xml)"
    host = data.get("host")
    if isinstance(host, str) and "host" not in errors and not is_loopback(host):
        if not data.get("api_key_env"):
            warnings["host"] = (
                f"{host} exposes the server beyond this machine: set API key variable "
                "(the launch is refused without one), or use 127.0.0.1"
            )
        else:
            warnings["host"] = f"{host} is reachable from other machines (the API key guards it)"
    key_env = data.get("api_key_env")
    if "api_key_env" not in errors and key_env and not os.environ.get(key_env):
        warnings["api_key_env"] = f"${key_env} is not set here: export it before starting"
    kv = data["kv_cache_dtype"]
    try:
        resolve_kv_cache_dtype(kv, kv_dtypes)
    except ValueError as error:
        errors["kv_cache_dtype"] = str(error).split(";")[0]
    note = kv_dtype_note(kv, kv_dtypes)
    if note:
        notes["kv_cache_dtype"] = note
    if isinstance(model, str) and "model" not in errors and not is_local_model(model):
        notes["model"] = "not a local directory: vLLM fetches it as a hub id"


# -- preview and diff ------------------------------------------------------------
@dataclass
class CommandPreview:
    """The command line qtui would run, with what the launch check says about it."""

    command: str
    env_line: str
    notes: list[str] = field(default_factory=list)
    refusal: str | None = None
    """Why the launch check would refuse this profile (the port is not probed)."""


def preview_command(
    profile: ServeProfile, engine: Engine | None, kv_dtypes: tuple[str, ...]
) -> CommandPreview:
    """The exact `vllm serve` line for `profile`, secrets masked; no key value ever."""
    shown = profile
    model_path = Path(profile.model).expanduser()
    if model_location_problem(profile.model) is None and model_path.is_dir():
        shown = profile.model_copy(update={"model": str(model_path.resolve())})
    try:
        kv_dtype, _ = resolve_kv_cache_dtype(profile.kv_cache_dtype, kv_dtypes)
    except ValueError:
        kv_dtype = profile.kv_cache_dtype
    args = profile_args(shown, kv_dtype)
    argv = engine.serve_argv(args) if engine is not None else ["vllm", "serve", *args]
    names = list(profile.env)
    if profile.api_key_env:
        names.append(f"VLLM_API_KEY (from ${profile.api_key_env})")
    preview = CommandPreview(
        command=masked_command(argv), env_line="env: " + (", ".join(names) or "(none)")
    )
    if engine is None:
        preview.refusal = "no vLLM engine configured (QTUI_VLLM): the launch check cannot run"
        return preview
    try:
        plan = plan_launch(profile, engine, check_port=False, check_mtp=False)
    except LaunchRefused as error:
        preview.refusal = str(error)
    else:
        preview.notes = list(plan.notes)
    return preview


def _flatten(profile: ServeProfile) -> dict[str, Any]:
    data = profile.model_dump(mode="json")
    spec = data.pop("speculative")
    data.update({f"speculative.{key}": value for key, value in spec.items()})
    path = Path(profile.model).expanduser()
    if model_location_problem(profile.model) is None and path.is_dir():
        data["model"] = str(path.resolve())  # the supervisor records the absolute path
    return data


def profile_changes(running: ServeProfile, edited: ServeProfile) -> list[tuple[str, Any, Any]]:
    """(field, running value, edited value) for every setting that differs."""
    before, after = _flatten(running), _flatten(edited)
    return [
        (key, before.get(key), after.get(key)) for key in after if before.get(key) != after.get(key)
    ]


def profile_name_problem(name: str, taken: set[str]) -> str | None:
    if not name:
        return "type a name"
    if not PROFILE_NAME.fullmatch(name):
        return "letters, digits, '.', '_' and '-' only; start with a letter or digit"
    if name in taken:
        return f"{name} exists already"
    return None
