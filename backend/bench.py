"""`qtui bench`: the model card's speed table for the user's own box and settings.

Four fixed prompts (the card's), greedy, fixed lengths (`ignore_eos`), so that
spec decoding on and off decode the same number of tokens; per prompt: TTFT,
decode tok/s, tokens, and the drafter's acceptance and mean length when spec
decoding is on; medians over repeats with the spread.

Decode tok/s is measured twice: from the reply (usage tokens over first-to-last
token arrival) and from the engine's counters (Δ `vllm:generation_tokens_total`
over Δ `vllm:request_decode_time_seconds_sum`). They part when the stream
reaches the client in bursts (a loaded client machine) or another client uses
the server; the JSON keeps both.

Why not `vllm bench serve`: it lives in the engine env (a second process with
its own torch import, ~10 s on CPU before it sends anything), reports
aggregate throughput for a dataset rather than per-prompt figures, and does not
read spec-decoding counters per request. This runner uses the same streaming
client as qtui's chat, so the figures are the ones a user's replies get.

`--ab` restarts the server qtui runs with spec off, then on (the same restart as
the `m` key), runs both halves, and leaves the server as it found it.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from backend import paths
from backend.atomic import write_atomic
from backend.chat import ChatClient, ChatOptions, ReplyAccumulator, root_url, user_message
from backend.config import ServeProfile
from backend.engine import engine_facts
from backend.metrics import GENERATION_TOKENS, MalformedMetrics, parse_metrics
from backend.supervisor import Phase, ServerSupervisor, took


@dataclass(frozen=True)
class BenchPrompt:
    name: str
    prompt: str
    max_tokens: int


MODEL_CARD_PROMPTS: tuple[BenchPrompt, ...] = (
    BenchPrompt("haiku", "Write a haiku", 128),
    BenchPrompt("quantum", "Explain quantum computing in 3 paragraphs", 256),
    BenchPrompt("deep-learning", "Write 8 paragraphs about deep learning history", 1024),
    BenchPrompt("arithmetic", "What is 127*83? Show reasoning", 256),
)
WARMUP_TOKENS = 16


class BenchError(RuntimeError):
    """The bench cannot run; the message says why and what to do."""


def load_prompts(path: Path, max_tokens: int | None) -> tuple[BenchPrompt, ...]:
    """A JSON list / JSONL of {"name", "prompt", "max_tokens"}, or plain text, a prompt a line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise BenchError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        items: list[Any] = json.loads(text) if text.lstrip().startswith("[") else []
    except ValueError as error:
        raise BenchError(f"{path}: not a JSON list ({error})") from None
    if not items:
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                items.append(json.loads(line) if line.startswith("{") else line)
            except ValueError as error:
                raise BenchError(f"{path}: bad JSON line {line[:40]!r} ({error})") from None
    prompts = []
    for number, item in enumerate(items, 1):
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or not str(item.get("prompt", "")).strip():
            raise BenchError(f"{path}: entry {number} has no prompt")
        tokens = max_tokens or int(item.get("max_tokens", 256))
        prompts.append(BenchPrompt(str(item.get("name", f"p{number}")), item["prompt"], tokens))
    if not prompts:
        raise BenchError(f"{path} holds no prompts")
    return tuple(prompts)


AGREEMENT = 0.03
"""Usage-based and engine-based tok/s further apart than this are flagged."""


@dataclass
class Measurement:
    """One reply."""

    ttft_s: float | None
    decode_s: float | None
    """First to last token, as the reply arrived."""
    tokens: int | None
    usage_tokens_per_s: float | None
    """Usage's completion tokens / decode_s: what the client saw."""
    engine_decode_s: float | None = None
    """Δ vllm:request_decode_time_seconds_sum: the engine's own decode time."""
    counter_tokens_per_s: float | None = None
    """Δ vllm:generation_tokens_total / engine_decode_s (with --concurrency above 1, the
    replies' aggregate)."""
    acceptance_rate: float | None = None
    mean_acceptance_length: float | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """The engine's figure where the server has the counters (bursts in the stream on a
        busy client machine cannot skew it), else the client's."""
        return self.counter_tokens_per_s or self.usage_tokens_per_s

    @property
    def agrees(self) -> bool | None:
        """Do the client's and the engine's tok/s agree within AGREEMENT?"""
        usage, engine = self.usage_tokens_per_s, self.counter_tokens_per_s
        if not usage or not engine:
            return None
        return abs(usage - engine) / engine <= AGREEMENT

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s, "agrees": self.agrees}


def _median(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def _spread(values: Sequence[float | None]) -> list[float] | None:
    known = [value for value in values if value is not None]
    return [min(known), max(known)] if known else None


@dataclass
class PromptResult:
    name: str
    prompt: str
    max_tokens: int
    runs: list[Measurement] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        return _median([getattr(run, key) for run in self.runs])

    def to_json(self) -> dict[str, Any]:
        keys = (
            "ttft_s",
            "tokens",
            "tokens_per_s",
            "usage_tokens_per_s",
            "counter_tokens_per_s",
            "acceptance_rate",
            "mean_acceptance_length",
        )
        return {
            "name": self.name,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "median": {key: self.median(key) for key in keys},
            "spread": {key: _spread([getattr(r, key) for r in self.runs]) for key in keys},
            "runs": [run.to_json() for run in self.runs],
        }


@dataclass
class HalfResult:
    """One spec setting's run of every prompt."""

    spec: str
    """`off`, or method:tokens such as `mtp:1`."""
    prompts: list[PromptResult] = field(default_factory=list)

    @property
    def overall_tokens_per_s(self) -> float | None:
        """All decoded tokens over all decode time (long prompts weigh more, as in use)."""
        runs = [run for prompt in self.prompts for run in prompt.runs]
        tokens = sum(run.tokens or 0 for run in runs)
        if all(run.engine_decode_s for run in runs):
            seconds = sum(run.engine_decode_s or 0.0 for run in runs)
        else:
            seconds = sum(run.decode_s or 0.0 for run in runs)
        return tokens / seconds if seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "overall_tokens_per_s": self.overall_tokens_per_s,
            "prompts": [prompt.to_json() for prompt in self.prompts],
        }


ProgressHook = Callable[[str], None]


DECODE_TIME_SUM = "vllm:request_decode_time_seconds_sum"


async def _engine_counters(http: httpx.AsyncClient, url: str) -> tuple[float, float] | None:
    """(tokens generated, seconds of request decode time) as the engine counts them."""
    try:
        response = await http.get(f"{url}/metrics", timeout=5.0)
        values = parse_metrics(response.text).values
    except (httpx.HTTPError, MalformedMetrics):
        return None
    if GENERATION_TOKENS not in values or DECODE_TIME_SUM not in values:
        return None
    return values[GENERATION_TOKENS], values[DECODE_TIME_SUM]


async def _one_reply(
    client: ChatClient, http: httpx.AsyncClient, prompt: BenchPrompt, max_tokens: int
) -> Measurement:
    options = ChatOptions(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    reply = ReplyAccumulator()
    before = await _engine_counters(http, client.url)
    async for _event in client.stream_reply([user_message(prompt.prompt)], options, reply):
        pass
    if reply.error:
        raise BenchError(f"{prompt.name}: {reply.error}")
    after = await _engine_counters(http, client.url)
    stats = reply.stats
    engine_s = counter_tps = None
    if before is not None and after is not None and after[1] > before[1]:
        engine_s = after[1] - before[1]
        counter_tps = (after[0] - before[0]) / engine_s
    spec = stats.spec
    return Measurement(
        ttft_s=stats.ttft_s,
        decode_s=stats.decode_s,
        tokens=stats.completion_tokens,
        usage_tokens_per_s=stats.tokens_per_s,
        engine_decode_s=engine_s,
        counter_tokens_per_s=counter_tps,
        acceptance_rate=spec.acceptance_rate if spec else None,
        mean_acceptance_length=spec.mean_acceptance_length if spec else None,
    )


async def run_half(
    url: str,
    spec: str,
    prompts: Sequence[BenchPrompt],
    *,
    repeat: int = 1,
    concurrency: int = 1,
    model: str | None = None,
    api_key_env: str | None = None,
    on_progress: ProgressHook | None = None,
) -> HalfResult:
    """Every prompt `repeat` times (`concurrency` at once), after one short warm-up."""
    say = on_progress or (lambda _text: None)
    half = HalfResult(spec)
    async with (
        ChatClient(url, model=model, api_key_env=api_key_env) as client,
        httpx.AsyncClient() as http,
    ):
        say(f"[{spec}] warm-up")
        await _one_reply(client, http, BenchPrompt("warm-up", "Hello", 0), WARMUP_TOKENS)
        for prompt in prompts:
            result = PromptResult(prompt.name, prompt.prompt, prompt.max_tokens)
            for round_number in range(repeat):
                say(f"[{spec}] {prompt.name} {round_number + 1}/{repeat}")
                batch = [
                    _one_reply(client, http, prompt, prompt.max_tokens) for _ in range(concurrency)
                ]
                result.runs += await asyncio.gather(*batch)
            half.prompts.append(result)
    return half


@dataclass
class BenchRun:
    """A kept result: what ran, where, and the figures."""

    id: str
    created: str
    url: str
    profile_name: str | None
    profile: dict[str, Any] | None
    vllm_version: str | None
    device: str
    repeat: int
    concurrency: int
    halves: list[HalfResult] = field(default_factory=list)

    def speedups(self) -> dict[str, float | None]:
        """Spec on over off, per prompt (median decode tok/s) and `overall`."""
        off = next((half for half in self.halves if half.spec == "off"), None)
        on = next((half for half in self.halves if half.spec != "off"), None)
        if off is None or on is None:
            return {}
        found: dict[str, float | None] = {}
        for before, after in zip(off.prompts, on.prompts, strict=False):
            slow, fast = before.median("tokens_per_s"), after.median("tokens_per_s")
            found[before.name] = fast / slow if slow and fast else None
        slow_all, fast_all = off.overall_tokens_per_s, on.overall_tokens_per_s
        found["overall"] = fast_all / slow_all if slow_all and fast_all else None
        return found

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchRun:
        """A kept result back as a run (for tables and charts); BenchError if it is not one."""
        try:
            return cls._from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise BenchError(f"result {data.get('id', '?')} is unreadable ({error!r})") from None

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> BenchRun:
        fields = set(Measurement.__dataclass_fields__)

        def measurement(run: dict[str, Any]) -> Measurement:
            known = {key: value for key, value in run.items() if key in fields}
            # Results kept before the engine's figure existed called the client's tok/s so.
            known.setdefault("usage_tokens_per_s", run.get("tokens_per_s"))
            return Measurement(**known)

        halves = [
            HalfResult(
                half["spec"],
                [
                    PromptResult(
                        prompt["name"],
                        prompt["prompt"],
                        prompt["max_tokens"],
                        [measurement(run) for run in prompt["runs"]],
                    )
                    for prompt in half["prompts"]
                ],
            )
            for half in data["halves"]
        ]
        return cls(
            id=str(data["id"]),
            created=str(data.get("created", "")),
            url=str(data.get("url", "")),
            profile_name=data.get("profile_name"),
            profile=data.get("profile"),
            vllm_version=data.get("vllm_version"),
            device=str(data.get("device", "")),
            repeat=int(data.get("repeat", 1)),
            concurrency=int(data.get("concurrency", 1)),
            halves=halves,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "url": self.url,
            "profile_name": self.profile_name,
            "profile": self.profile,
            "vllm_version": self.vllm_version,
            "device": self.device,
            "repeat": self.repeat,
            "concurrency": self.concurrency,
            "halves": [half.to_json() for half in self.halves],
            "speedup": self.speedups(),
        }


def device_name() -> str:
    """The GPU's name, else the CPU's model: what the figures were measured on."""
    from backend.gpu import GpuSampler

    sampler = GpuSampler()
    try:
        sample = sampler.sample()
    finally:
        sampler.close()
    if sample.has_gpu and sample.gpus:
        names = sorted({reading.name for reading in sample.gpus})
        return f"{len(sample.gpus)}x {', '.join(names)}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()}"


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def results_dir() -> Path:
    path = paths.data_dir() / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_run(run: BenchRun, extra_path: Path | None = None) -> Path:
    """Kept in the data dir (and at `extra_path` too, for --json OUT); atomic."""
    text = json.dumps(run.to_json(), indent=2)
    target = results_dir() / f"{run.id}.json"
    for path in (target, extra_path):
        if path is None:
            continue
        write_atomic(path, text)
    return target


def list_runs() -> list[dict[str, Any]]:
    runs = []
    for path in sorted(results_dir().glob("*.json")):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return runs


def load_run(run_id: str) -> dict[str, Any]:
    path = results_dir() / f"{run_id}.json"
    if not path.is_file():
        path = Path(run_id)
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        known = ", ".join(run["id"] for run in list_runs()[-5:]) or "none yet"
        raise BenchError(f"no bench result {run_id!r} (recent: {known})") from None


def spec_label(profile: ServeProfile) -> str:
    spec = profile.speculative
    return "off" if not spec.enabled else f"{spec.method}:{spec.num_speculative_tokens}"


def plan_halves(
    supervisor: ServerSupervisor, *, ab: bool, url: str | None, profile_name: str | None
) -> tuple[str, Any, list[tuple[str, ServeProfile | None]]]:
    """(url, the server record or None, [(spec label, profile to restart with or None)]).

    Refuses, with the fix, what cannot run: A/B on a server qtui does not run, no
    server, another profile than the one running.
    """
    record = supervisor.load_record()
    ours = supervisor.status().phase is Phase.READY and record is not None
    same = record is not None and bool(url) and root_url(url or "") == root_url(record.url)
    if url and not (ours and same):
        if ab:
            raise BenchError(
                f"--ab restarts the server with spec off and on, which needs a server qtui "
                f"runs; {url} is not one (start one with `qtui serve start`)"
            )
        return url, None, [("?", None)]
    if not ours or record is None:
        raise BenchError("no server qtui runs is ready: `qtui serve start`, or pass --url")
    if profile_name and profile_name != record.profile_name:
        raise BenchError(
            f"the running server serves profile {record.profile_name}, not {profile_name}: "
            f"`qtui serve restart {profile_name}` first"
        )
    profile = record.serve_profile
    if not ab:
        return record.url, record, [(spec_label(profile), None)]
    spec = profile.speculative
    off = profile.model_copy(update={"speculative": spec.model_copy(update={"method": "off"})})
    on = profile.model_copy(update={"speculative": spec if spec.enabled else spec.toggled()})
    # The half the server is already in goes first: one restart fewer.
    order = [(off, "off"), (on, spec_label(on))]
    if spec.enabled:
        order.reverse()
    return record.url, record, [(label, chosen) for chosen, label in order]


def run_bench(
    supervisor: ServerSupervisor,
    prompts: Sequence[BenchPrompt],
    *,
    ab: bool = False,
    url: str | None = None,
    profile_name: str | None = None,
    repeat: int = 1,
    concurrency: int = 1,
    ready_timeout_s: float = 900.0,
    on_progress: ProgressHook | None = None,
) -> BenchRun:
    """The whole bench; with `ab` the server is restarted spec off and on (as `m` does) and
    left in the setting it had, whatever happens."""
    say = on_progress or (lambda _text: None)
    target, record, halves = plan_halves(supervisor, ab=ab, url=url, profile_name=profile_name)
    name = record.profile_name if record is not None else None
    started_profile = record.serve_profile if record is not None else None
    engine = supervisor.engine
    run = BenchRun(
        id=new_run_id(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        url=target,
        profile_name=name,
        profile=started_profile.model_dump() if started_profile else None,
        vllm_version=engine_facts(engine).version if engine else None,
        device=device_name(),
        repeat=repeat,
        concurrency=concurrency,
    )
    try:
        for label, profile in halves:
            current = supervisor.load_record()
            needs_restart = (
                profile is not None
                and name is not None
                and current is not None
                and spec_label(current.serve_profile) != label
            )
            if needs_restart and profile is not None and name is not None:
                say(f"restarting {name} with spec {label} (as `m` does)…")
                status = supervisor.restart(name, profile, timeout_s=ready_timeout_s)
                say(f"ready with spec {label}{took(status.record)}")
            api_key_env = started_profile.api_key_env if started_profile else None
            half = run_half(
                target, label, prompts, repeat=repeat, concurrency=concurrency,
                api_key_env=api_key_env, on_progress=say,
            )  # fmt: skip
            run.halves.append(asyncio.run(half))
    finally:
        current = supervisor.load_record()
        if started_profile is not None and name is not None and current is not None:
            wanted = spec_label(started_profile)
            if spec_label(current.serve_profile) != wanted:
                say(f"restoring spec {wanted}…")
                supervisor.restart(name, started_profile, timeout_s=ready_timeout_s)
    return run


def fmt_rate(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def result_table(run: BenchRun) -> str:
    """One row per prompt: each half's median tok/s (acceptance), then the speed-up."""
    halves = run.halves
    head = f"{'prompt':<14}{'tokens':>6}" + "".join(
        f"{'tok/s ' + half.spec:>14}{'TTFT ms':>8}" for half in halves
    )
    if len(halves) == 2:
        head += f"{'gain':>8}"
    lines = [f"{run.device}  vLLM {run.vllm_version or '?'}  repeat {run.repeat}", head]
    speedups = run.speedups()
    for index, prompt in enumerate(halves[0].prompts):
        row = f"{prompt.name[:13]:<14}{prompt.max_tokens:>6}"
        for half in halves:
            result = half.prompts[index]
            accept = result.median("acceptance_rate")
            cell = fmt_rate(result.median("tokens_per_s"))
            if any(run.agrees is False for run in result.runs):
                cell += "*"
            if accept is not None:
                cell += f" {accept:.0%}"
            ttft = result.median("ttft_s")
            row += f"{cell:>14}{fmt_rate(ttft * 1000 if ttft else None, 0):>8}"
        if len(halves) == 2:
            row += f"{fmt_rate(speedups.get(prompt.name), 2, 'x'):>8}"
        lines.append(row)
    overall = f"{'overall':<14}{'':>6}" + "".join(
        f"{fmt_rate(half.overall_tokens_per_s):>14}{'':>8}" for half in halves
    )
    if len(halves) == 2:
        overall += f"{fmt_rate(speedups.get('overall'), 2, 'x'):>8}"
    lines.append(overall)
    if any(run.agrees is False for half in halves for p in half.prompts for run in p.runs):
        lines.append("* the client's rate was over 3 % off the engine's; the engine's is shown")
    return "\n".join(lines)


def compare_table(first: dict[str, Any], second: dict[str, Any]) -> str:
    """Overall and per-prompt tok/s of two kept results, half by half."""
    lines = [f"{'':<24}{first['id']:>18}{second['id']:>18}"]
    lines.append(f"{'device':<24}{first['device'][:17]:>18}{second['device'][:17]:>18}")
    for a_half, b_half in zip(first["halves"], second["halves"], strict=False):
        label = f"{a_half['spec']} / {b_half['spec']}"
        lines.append(
            f"{label:<24}{fmt_rate(a_half['overall_tokens_per_s']):>18}"
            f"{fmt_rate(b_half['overall_tokens_per_s']):>18}"
        )
        for a_prompt, b_prompt in zip(a_half["prompts"], b_half["prompts"], strict=False):
            lines.append(
                f"  {a_prompt['name']:<22}{fmt_rate(a_prompt['median']['tokens_per_s']):>18}"
                f"{fmt_rate(b_prompt['median']['tokens_per_s']):>18}"
            )
    a_gain = (first.get("speedup") or {}).get("overall")
    b_gain = (second.get("speedup") or {}).get("overall")
    lines.append(f"{'speed-up':<24}{fmt_rate(a_gain, 2, 'x'):>18}{fmt_rate(b_gain, 2, 'x'):>18}")
    return "\n".join(lines)
