"""AutoRound W4A16 job, run by the quantization environment's Python, never imported by qtui.

qtui starts `QUANT_PYTHON autoround_job.py JOB_DIR`: the job spec is
JOB_DIR/spec.json, the outcome is written to JOB_DIR/result.json so that any
later qtui (the panel may have died, the SSH session dropped) can read how it
ended. Progress is AutoRound's own stderr output (tqdm + logger), parsed by
backend/quantize.py. This directory has no __init__.py on purpose: it is data
for another interpreter, outside the panel's import graph.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

# qtui's one atomic write (temp, fsync, rename, fsync the dir): backend/atomic.py is
# plain stdlib, so this interpreter can import it from the checkout; appended, so
# nothing of the quantization environment is shadowed.
sys.path.append(str(Path(__file__).resolve().parents[2]))
from backend.atomic import write_json_atomic


def _write_result(job_dir: Path, result: dict) -> None:
    write_json_atomic(job_dir / "result.json", result)


def main(job_dir: Path) -> int:
    spec = json.loads((job_dir / "spec.json").read_text())
    started = time.time()
    try:
        import auto_round
        from auto_round import AutoRound

        print(f"qtui-job: auto-round {auto_round.__version__}", flush=True)
        options = {
            "scheme": "W4A16",
            "bits": 4,
            "group_size": 128,
            "sym": True,
            "iters": spec["iters"],
            "nsamples": spec["nsamples"],
            "seqlen": spec["seqlen"],
            # Compile switches itself on at iters >= 10 and costs minutes on small jobs.
            "enable_torch_compile": spec.get("torch_compile", False),
            "device_map": spec["device"],
        }
        if spec.get("dataset"):
            # A path string: a local .jsonl/.json file, or a hub dataset name.
            options["dataset"] = spec["dataset"]
        quantizer = AutoRound(spec["model"], **options)
        quantizer.quantize_and_save(output_dir=spec["out"], format="auto_round")
        # The return value changed shape across versions; the folder on disk did not.
        folder_path = _find_output(Path(spec["out"]))
        _write_result(
            job_dir,
            {
                "ok": True,
                "output_dir": str(folder_path),
                "seconds": round(time.time() - started, 2),
                "auto_round_version": auto_round.__version__,
            },
        )
        print(f"qtui-job: done {folder_path}", flush=True)
        return 0
    except KeyboardInterrupt:
        _write_result(job_dir, {"ok": False, "cancelled": True, "error": "cancelled"})
        print("qtui-job: cancelled", flush=True)
        return 130
    except BaseException as error:  # the job's outcome must reach result.json
        traceback.print_exc()
        message = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        _write_result(job_dir, {"ok": False, "error": message})
        return 1


def _find_output(out: Path) -> Path:
    """AutoRound saves under OUT/<model>-w4g128/ in some versions, OUT itself in others."""
    if (out / "config.json").is_file():
        return out
    candidates = sorted(out.glob("*/config.json"), key=lambda path: path.stat().st_mtime)
    return candidates[-1].parent if candidates else out


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
