#!/usr/bin/env bash
# Fix e: a torchvision that imports beside torch 2.13.0+cpu. Usage: fix-torchvision.sh VENV
#
# The registry's torchvision 0.28.0 (the release paired with torch 2.13) is a CUDA build:
# its C++ ops cannot load on torch+cpu, which torchvision tolerates, except for two
# unguarded fake registrations (nms, qnms) that then raise "operator torchvision::nms does
# not exist". Installed without deps, with those two applied only when the ops loaded,
# it imports; what Qwen3.5 needs of it (image and video processors, transforms v2) is
# pure Python. Idempotent.
set -euo pipefail
VENV=$1
"$VENV/bin/pip" install -q --no-deps "torchvision==0.28.0"
"$VENV/bin/python" - <<'PY'
import pathlib
import sysconfig

meta = pathlib.Path(sysconfig.get_paths()["purelib"]) / "torchvision" / "_meta_registrations.py"
text = meta.read_text()
only_with_ops = "if torchvision.extension._has_ops() else (lambda fn: fn)"
for op in ("nms", "qnms"):
    plain = f'@torch.library.register_fake("torchvision::{op}")'
    text = text.replace(plain, f"@({plain[1:]} {only_with_ops})")
if not text.startswith("import torchvision\n"):
    text = "import torchvision\n" + text
meta.write_text(text)
PY
"$VENV/bin/python" -c "import torchvision.transforms.v2"
