"""The GPU lane: qtui against real vLLM (CUDA) on the lent GPU, in one command.

Run on the device after the three calls of ../shared/gpu-lane/README.md (see the
README's "GPU lane" section), from the repo root:

    bash .gpu-lane/device-setup.sh && . /tmp/gpu-lane-env.sh \\
        && python3 bench/gpu_lane.py --out "$OUT" --part all

`--part serve` serves the tiny Qwen3.5 with MTP through qtui (cold start, chat,
`serve status --json`, `m` off and on, panel screenshots at 80x24 and 160x50,
stop and the GPU memory freed); `--part panel` runs bench/bench_panel.py there
(first frame, idle CPU with NVML sampled for real, key latency; the server on
CUDA); `--part checks` serves a random MTP head (the
alarm) and a packed mtp.fc (refused, patched, drafting). Everything goes through
qtui's own CLI and panel, as a user would. Results: OUT/gpu_lane.json (written
after every step, so a cut-off run keeps what it measured), OUT/*.svg, OUT/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.config import ServeProfile, SpeculativeSettings  # noqa: E402
from backend.gpu import GpuSampler, gpu_summary  # noqa: E402

QTUI = [sys.executable, "-m", "tui"]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
REPLY_TOKENS = 256


class Lane:
    def __init__(self, out: Path, work: Path) -> None:
        self.out, self.work = out, work
        self.summary: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}
        (out / "logs").mkdir(parents=True, exist_ok=True)
        home = work / "home"
        os.environ |= {
            "QTUI_CONFIG": str(home / "config.toml"),
            "QTUI_STATE_DIR": str(home / "state"),
            "QTUI_DATA_DIR": str(home / "data"),
        }

    def save(self) -> None:
        (self.out / "gpu_lane.json").write_text(json.dumps(self.summary, indent=2))

    def step(self, name: str, value: Any) -> None:
        self.summary[name] = value
        self.save()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {json.dumps(value)[:600]}", flush=True)

    def qtui(self, *args: str, timeout: float = 600) -> tuple[int, str, str, float]:
        started = time.monotonic()
        done = subprocess.run(
            [*QTUI, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        return done.returncode, done.stdout, done.stderr.strip(), time.monotonic() - started

    def status(self) -> dict[str, Any]:
        code, out, err, _ = self.qtui("serve", "status", "--json")
        return json.loads(out) if code == 0 else {"error": err}

    def chats(self, count: int) -> list[dict[str, Any]]:
        replies = []
        for _ in range(count):
            code, out, err, _ = self.qtui(
                "chat", PROMPT, "--ignore-eos", "--max-tokens", str(REPLY_TOKENS),
                "--temperature", "0", "--json", "--no-save",
            )  # fmt: skip
            data = json.loads(out) if out.strip() else {"error": err}
            stats = data.get("stats") or {}
            replies.append(
                {
                    "rc": code,
                    "tokens_per_s": stats.get("tokens_per_s"),
                    "completion_tokens": stats.get("completion_tokens"),
                    "spec": stats.get("spec"),
                    "speed": data.get("speed"),
                    "error": data.get("error"),
                }
            )
        return replies

    def keep_log(self, label: str) -> None:
        record = self.status()
        log = record.get("log")
        if log and Path(log).is_file():
            shutil.copy(log, self.out / "logs" / f"{label}.log")

    def write_config(self, model: Path) -> None:
        import tomli_w

        profile = ServeProfile(
            model=str(model),
            served_model_name="tiny",
            max_model_len=2048,
            gpu_memory_utilization=0.15,
            language_model_only=True,
            enforce_eager=True,
            speculative=SpeculativeSettings(method="mtp", toggle_method="mtp"),
        )
        config = {
            "vllm": os.environ.get("QTUI_VLLM", "python3"),
            "default_profile": "gpu-mtp",
            "ready_timeout_s": 500.0,
            "profiles": {"gpu-mtp": profile.model_dump(exclude_none=True)},
        }
        path = Path(os.environ["QTUI_CONFIG"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tomli_w.dumps(config).encode())

    def build_models(self) -> dict[str, Path]:
        models = {"good": self.work / "tiny-mtp", "random": self.work / "tiny-mtp-random"}
        self.qtui("tiny-model", "--mtp", str(models["good"]))
        self.qtui("tiny-model", "--mtp", "--mtp-head", "random", str(models["random"]))
        return models

    def gpu_now(self) -> dict[str, Any]:
        sampler = GpuSampler()
        try:
            return gpu_summary(sampler.sample())
        finally:
            sampler.close()

    # -- part serve ---------------------------------------------------------
    def part_serve(self, models: dict[str, Path]) -> None:
        self.write_config(models["good"])
        self.step("gpu_before", self.gpu_now())
        code, _, err, seconds = self.qtui("serve", "start")
        status = self.status()
        self.step(
            "cold_start",
            {"rc": code, "seconds": round(seconds, 1), "stderr": err[-600:],
             "ready_after_s": status.get("ready_after_s"),
             "command_has_triton_gdn": "--gdn-prefill-backend triton" in err
             or "triton" in json.dumps(status)},
        )  # fmt: skip
        self.keep_log("cold-mtp")
        if code != 0:
            return
        self.step("mtp_chats", self.chats(3))
        on = self.status()
        self.step("mtp_status", {"telemetry": on.get("telemetry"), "gpu": on.get("gpu")})

        code, _, err, seconds = self.qtui("serve", "toggle-spec")
        off = self.status()
        self.step(
            "toggle_off",
            {"rc": code, "seconds": round(seconds, 1), "stderr": err[-300:],
             "stop_before_s": off.get("stop_before_s"), "ready_after_s": off.get("ready_after_s")},
        )  # fmt: skip
        self.step("off_chats", self.chats(3))
        off = self.status()
        self.step("off_status", {"spec_run": (off.get("telemetry") or {}).get("spec_run")})

        code, _, err, seconds = self.qtui("serve", "toggle-spec")
        back = self.status()
        self.step(
            "toggle_on",
            {"rc": code, "seconds": round(seconds, 1), "stderr": err[-300:],
             "stop_before_s": back.get("stop_before_s"),
             "ready_after_s": back.get("ready_after_s")},
        )  # fmt: skip
        self.step("mtp_again_chats", self.chats(2))
        after = self.status()
        self.step("speed", (after.get("telemetry") or {}).get("speed"))
        self.step("screenshots", asyncio.run(self.screenshots()))
        record = after
        code, _, err, seconds = self.qtui("serve", "stop")
        time.sleep(2)
        self.step(
            "stop",
            {"rc": code, "seconds": round(seconds, 1), "stderr": err,
             "server_memory_while_up": (record.get("gpu") or {}).get("server_memory"),
             "gpu_after": self.gpu_now()},
        )  # fmt: skip

    def part_panel(self, models: dict[str, Path]) -> None:
        """bench/bench_panel.py on this machine: first frame, idle CPU (NVML sampled for
        real) and key latency beside a bare Textual app, with the tiny model on CUDA."""
        self.write_config(models["good"])
        command = [
            sys.executable, str(REPO / "bench" / "bench_panel.py"), "--runs", "2",
            "--config", os.environ["QTUI_CONFIG"], "--profile", "gpu-mtp",
            "--qtui", f"{sys.executable} -m tui",
        ]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=560)
        (self.out / "logs" / "bench_panel.txt").write_text(done.stdout + done.stderr)
        self.step(
            "panel_bench",
            {"rc": done.returncode, "seconds": round(time.monotonic() - started, 1),
             "figures": done.stdout[-3000:], "stderr": done.stderr[-1500:]},
        )  # fmt: skip

    def part_cold(self, models: dict[str, Path]) -> None:
        """Only a first start, watched from the panel: the loading stages it shows."""
        self.write_config(models["good"])
        self.step("cold_panel", asyncio.run(self.watch_start()))
        self.keep_log("cold-watched")

    async def watch_start(self) -> dict[str, Any]:
        from tui.app import make_app
        from tui.widgets.status_bar import ServerStatusBar

        app = make_app()
        seen: list[tuple[float, str]] = []
        started = time.monotonic()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("s")
            while time.monotonic() - started < 400:
                text = str(app.screen.query_one(ServerStatusBar).render())
                if not seen or text != seen[-1][1]:
                    seen.append((round(time.monotonic() - started, 1), text))
                if "● ready" in text:
                    break
                await asyncio.sleep(1.0)
            app.save_screenshot("panel-cold-ready-80x24.svg", str(self.out))
        return {"bar_changes": seen, "seconds": round(time.monotonic() - started, 1)}

    async def screenshots(self) -> dict[str, Any]:
        from tui.app import make_app

        shots: dict[str, Any] = {}
        for width, height in ((80, 24), (160, 50)):
            app = make_app()
            async with app.run_test(size=(width, height)) as pilot:
                if width < 120:
                    await pilot.press("t")
                await asyncio.sleep(4)  # a few telemetry polls
                await pilot.pause()
                name = f"panel-{width}x{height}.svg"
                app.save_screenshot(name, str(self.out))
                shots[name] = (self.out / name).stat().st_size
        return shots

    # -- part checks --------------------------------------------------------
    def part_checks(self, models: dict[str, Path]) -> None:
        self.write_config(models["good"])
        code, _, err, seconds = self.qtui("serve", "start", "--model", str(models["random"]))
        self.step("random_start", {"rc": code, "seconds": round(seconds, 1), "stderr": err[-300:]})
        if code == 0:
            self.step("random_chats", self.chats(2))
            telemetry = self.status().get("telemetry") or {}
            self.step(
                "random_alarm",
                {"spec_run": telemetry.get("spec_run"), "warnings": telemetry.get("warnings")},
            )
            self.qtui("serve", "stop")

        sys.path.insert(0, str(REPO))
        from tests.mtp_checkpoints import copy_checkpoint, pack_fc

        packed = self.work / "tiny-mtp-packed-fc"
        shutil.rmtree(packed, ignore_errors=True)
        pack_fc(copy_checkpoint(models["good"], packed), covered=False)
        refused = self.qtui("serve", "start", "--model", str(packed))
        forced = self.qtui("serve", "start", "--model", str(packed), "--skip-mtp-check")
        self.keep_log("packed-fc-forced")
        patched = self.qtui("mtp", "patch", str(packed))
        self.step(
            "packed_fc",
            {"doctor_refused": [refused[0], refused[2][-300:]],
             "vllm_forced": [forced[0], forced[2][-300:], round(forced[3], 1)],
             "patch": [patched[0], patched[1][-300:]]},
        )  # fmt: skip
        code, _, err, seconds = self.qtui("serve", "start", "--model", str(packed))
        self.step("patched_start", {"rc": code, "seconds": round(seconds, 1)})
        if code == 0:
            self.step("patched_chats", self.chats(2))
            self.qtui("serve", "stop")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/lane-out")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/qtui-lane"))
    parser.add_argument(
        "--part", choices=("serve", "checks", "cold", "panel", "all"), default="all"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lane = Lane(args.out, args.work)
    started = time.monotonic()
    try:
        models = lane.build_models()
        if args.part == "cold":
            lane.part_cold(models)
        if args.part == "panel":
            lane.part_panel(models)
        if args.part in ("serve", "all"):
            lane.part_serve(models)
        if args.part in ("checks", "all"):
            lane.part_checks(models)
    finally:
        lane.qtui("serve", "stop")
        lane.step("wall_s", round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
