"""The OpenAI dialect, without HTTP: request bodies -> validated requests, results -> response bodies.

Everything here is a plain function of its arguments, so the validation is tested without a server.
A field that is wrong raises `RequestError` naming it; the app turns that into OpenAI's error JSON:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

Fields this server does not know are ignored (as OpenAI's clients send many). Fields it knows but
cannot honour (n > 1, best_of > 1) are refused rather than silently dropped.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ..engine.sampling import SamplingParams
from ..engine.spec_policy import MODES

MAX_STOP_STRINGS = 16
MAX_LOGIT_BIAS = 1024  # entries of one request's logit_bias (OpenAI allows 300)
MAX_STOP_CHARS = 1000
LOGIT_BIAS_RANGE = 100.0  # as OpenAI: each bias in [-100, 100]
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error JSON with this status."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.type = type
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:  # fmt: skip
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def parse_json_body(raw: bytes) -> dict:
    """The request body as a JSON object (NaN and Infinity are not JSON and are refused)."""

    def no_constants(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except UnicodeDecodeError:
        raise RequestError("The request body is not valid UTF-8.") from None
    except (ValueError, RecursionError) as e:
        raise RequestError(f"The request body is not valid JSON: {e}.") from None
    if not isinstance(body, dict):
        raise RequestError(f"The request body must be a JSON object, not {_json_type(body)}.")
    if b"\\u" in raw and _SURROGATE_ESCAPE.search(raw):  # only then can a lone surrogate be in it
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError("The request holds a lone UTF-16 surrogate (an escape like \\ud800 without its "
                               "pair), which is not a Unicode character; send valid text.") from None  # fmt: skip
    return body


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


# -- field readers: each returns the value or the default, or raises RequestError naming the field


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _number(body: dict, name: str, default: float, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False) -> float:  # fmt: skip
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"'{name}' must be a number, got {_json_type(value)}: {value!r}.", name)
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and value > hi
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        raise RequestError(
            f"'{name}' = {value!r} is out of range: it must be in {left}{_fmt(lo)}, {_fmt(hi)}].", name
        )
    return float(value)


def _fmt(x: float | None) -> str:
    return "inf" if x is None else f"{x:g}"


def _integer(body: dict, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{name}' must be an integer, got {_json_type(value)}: {value!r}.", name)
    if lo is not None and value < lo:
        raise RequestError(f"'{name}' = {value} is out of range: it must be at least {lo}.", name)
    if hi is not None and value > hi:
        raise RequestError(f"'{name}' = {value} is out of range: it must be at most {hi}.", name)
    return value


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{name}' must be a boolean, got {_json_type(value)}: {value!r}.", name)
    return value


def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError(f"'stop' must be a string or an array of strings, got {_json_type(value)}.", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise RequestError(f"'stop' holds {len(stops)} strings; at most {MAX_STOP_STRINGS} are allowed.", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise RequestError(f"each 'stop' string must be at most {MAX_STOP_CHARS} characters.", "stop")
    return [s for s in stops if s]


def _logit_bias(body: dict, n_vocab: int | None) -> dict[int, float]:
    value = body.get("logit_bias")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"'logit_bias' must be an object of token id -> bias, got {_json_type(value)}.",
                           "logit_bias")  # fmt: skip
    if len(value) > MAX_LOGIT_BIAS:
        raise RequestError(f"'logit_bias' holds {len(value)} entries; at most {MAX_LOGIT_BIAS} are allowed.",
                           "logit_bias")  # fmt: skip
    out: dict[int, float] = {}
    for key, bias in value.items():
        try:
            tok = int(key)
        except ValueError:
            raise RequestError(f"'logit_bias' keys must be token ids (integers as strings), got {key!r}.",
                               "logit_bias") from None  # fmt: skip
        if tok < 0 or (n_vocab is not None and tok >= n_vocab):
            limit = f"0..{n_vocab - 1}" if n_vocab is not None else "non-negative"
            raise RequestError(f"'logit_bias' names token {tok}, outside this vocabulary ({limit}).", "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise RequestError(f"'logit_bias' for token {key} must be a number, got {bias!r}.", "logit_bias")
        if not -LOGIT_BIAS_RANGE <= bias <= LOGIT_BIAS_RANGE:
            raise RequestError(
                f"'logit_bias' for token {key} is {bias!r}: each bias must be in [-100, 100].", "logit_bias"
            )
        out[tok] = float(bias)
    return out


def _token_ids(value: list, name: str, n_vocab: int | None) -> list[int]:
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int):
            raise RequestError(f"'{name}' must be an array of token ids (integers), found {t!r}.", name)
        if t < 0 or (n_vocab is not None and t >= n_vocab):
            limit = f"0..{n_vocab - 1}" if n_vocab is not None else "non-negative"
            raise RequestError(f"'{name}' holds token id {t}, outside this vocabulary ({limit}).", name)
    return list(value)


@dataclass
class GenerationRequest:
    """A validated /v1/chat/completions or /v1/completions request."""

    kind: str  # "chat" or "completion"
    params: SamplingParams
    max_tokens: int | None  # None: until the context ends
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    messages: list[dict] | None = None  # chat: [{"role": str, "content": str}]
    prompt: str | list[int] | None = None  # completion: text or token ids
    echo: bool = False  # completion: the prompt's text before the reply
    speculative: str | None = "default"  # "auto", "draft", "ngram", None (off), "default": the server's
    grammar: Any = None  # engine.constrain.Grammar every token obeys (response_format, grammar, json_schema)
    logprobs: int | None = None  # None: off; N: each token's log-probability and the N likeliest
    tools: Any = None  # chat: OpenAI's tools (validated again by toolcalls.plan_chat)
    tool_choice: Any = None
    parallel_tool_calls: bool = True
    reasoning_budget: int | None = None  # tokens a <think> block may take (None: no limit)
    chat_template_kwargs: dict | None = None  # chat: more template variables ({"enable_thinking": true})


def parse_sampling(body: dict, n_vocab: int | None = None) -> tuple[SamplingParams, int | None, list[str]]:
    """Sampling fields -> (SamplingParams, max_tokens or None, stop strings). Absent or null fields take
    the defaults of `edgeinfer run` (SamplingParams' own: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05,
    no penalties)."""
    d = SamplingParams()
    max_tokens = _integer(body, "max_completion_tokens", None, lo=1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", None, lo=1)
    params = SamplingParams(
        temperature=_number(body, "temperature", d.temperature, lo=0.0),
        top_p=_number(body, "top_p", d.top_p, lo=0.0, hi=1.0, lo_open=True),
        top_k=_integer(body, "top_k", d.top_k),
        min_p=_number(body, "min_p", d.min_p, lo=0.0, hi=1.0),
        presence_penalty=_number(body, "presence_penalty", d.presence_penalty, lo=-2.0, hi=2.0),
        frequency_penalty=_number(body, "frequency_penalty", d.frequency_penalty, lo=-2.0, hi=2.0),
        repeat_penalty=_number(body, "repeat_penalty", d.repeat_penalty, lo=0.0, lo_open=True),
        seed=_integer(body, "seed", None, lo=0),
        logit_bias=_logit_bias(body, n_vocab),
    )
    params.validate(n_vocab)  # the engine's own rules, as a second line (the checks above already hold them)
    return params, max_tokens, _stop(body)


def _common(body: dict, kind: str, n_vocab: int | None) -> GenerationRequest:
    n = _integer(body, "n", 1)
    if n != 1:
        raise RequestError(f"'n' = {n}: this server makes one choice per request; send n = 1 (or leave it out).", "n")
    params, max_tokens, stop = parse_sampling(body, n_vocab)
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError(f"'stream_options' must be an object, got {_json_type(options)}.", "stream_options")
    include_usage = _boolean(options or {}, "include_usage", False) if stream else False
    spec = body.get("speculative", "default")
    if spec not in ("default", "auto", *MODES, "off", None):
        raise RequestError(f"'speculative' must be one of \"auto\", \"draft\", \"ngram\", \"off\" or null, got {spec!r}.",
                           "speculative")  # fmt: skip
    req = GenerationRequest(kind, params, max_tokens, stop, stream, include_usage)
    req.speculative = None if spec == "off" else spec
    from ..engine.constrain import GrammarError, grammar_from_request

    try:  # fail closed: a schema or grammar that does not compile is a 400 naming it
        req.grammar = grammar_from_request(body.get("response_format"), body.get("grammar"), body.get("json_schema"))
    except GrammarError as e:
        raise RequestError(str(e), e.field or "response_format", code="invalid_grammar") from None
    budget = _integer(body, "reasoning_budget", None, lo=-1)
    req.reasoning_budget = None if budget is None or budget < 0 else budget
    return req


def text_parts(content: Any, where: str, param: str, kinds: dict[str, str] | None = None, strings: bool = False,
               what: str = "text parts") -> str:
    """A message's content -> its text, for every dialect: None -> "", a string as it is, or an array of parts
    whose type is one of `kinds` (type -> the field holding its text; {"text": "text"} by default), and bare
    strings where `strings`, joined. Anything else is a RequestError naming where it is and what is read."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or an array of {what}, got {_json_type(content)}.", param)
    kinds = kinds or {"text": "text"}
    out = []
    for i, part in enumerate(content):
        if strings and isinstance(part, str):
            out.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            got = repr(kind) if isinstance(part, dict) else _json_type(part)
            raise RequestError(f"{where}.content[{i}] is of type {got}; this model reads {what} only.", param)
        if not isinstance(part.get(kinds[kind]), str):
            raise RequestError(f"{where}.content[{i}]: a {kind} part needs a string {kinds[kind]!r}.", param)
        out.append(part[kinds[kind]])
    return "".join(out)


def parse_chat_request(body: dict, n_vocab: int | None = None) -> GenerationRequest:
    """A /v1/chat/completions body -> GenerationRequest, or RequestError naming the field."""
    messages = body.get("messages")
    if messages is None:
        raise RequestError("'messages' is required: an array of {\"role\", \"content\"} objects.", "messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"'messages' must be a non-empty array of messages, got {_json_type(messages)}.",
                           "messages")  # fmt: skip
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object with 'role' and 'content'.", "messages")
        role = m.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise RequestError(f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}; got {role!r}.", "messages")
        if role == "developer":  # OpenAI's newer name for the system message
            role = "system"
        msg = {"role": role, "content": text_parts(m.get("content"), f"messages[{i}]", "messages", strings=True)}
        calls = m.get("tool_calls")
        if calls is not None and role == "assistant":
            if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                                      for c in calls):  # fmt: skip
                raise RequestError(f"messages[{i}].tool_calls must be an array of {{\"id\", \"type\": \"function\", "
                                   "\"function\": {\"name\", \"arguments\"}} objects.", "messages")  # fmt: skip
            if calls:
                msg["tool_calls"] = calls
        for key in ("tool_call_id", "name"):
            if isinstance(m.get(key), str):
                msg[key] = m[key]
        if role == "assistant" and isinstance(m.get("reasoning_content"), str) and m["reasoning_content"]:
            msg["reasoning_content"] = m["reasoning_content"]  # templates that show it (Gemma 4, gpt-oss) do
        clean.append(msg)
    logprobs = _boolean(body, "logprobs", False)
    top = _integer(body, "top_logprobs", None, lo=0, hi=20)
    if top is not None and not logprobs:
        raise RequestError("'top_logprobs' needs 'logprobs': true.", "top_logprobs")
    req = _common(body, "chat", n_vocab)
    req.messages = clean
    req.logprobs = (top or 0) if logprobs else None
    tools = body.get("tools")
    if tools is not None or body.get("tool_choice") is not None:
        from ..toolcalls import ToolError, parse_tool_choice, parse_tools

        try:
            parsed = parse_tools(tools)
            parse_tool_choice(body.get("tool_choice"), parsed)
        except ToolError as e:
            raise RequestError(str(e), e.field or "tools") from None
        req.tools, req.tool_choice = tools, body.get("tool_choice")
    req.parallel_tool_calls = _boolean(body, "parallel_tool_calls", True)
    if body.get("chat_template_kwargs") is not None:
        from ..toolcalls import ToolError, check_template_kwargs

        try:
            req.chat_template_kwargs = check_template_kwargs(body["chat_template_kwargs"])
        except ToolError as e:
            raise RequestError(str(e), "chat_template_kwargs") from None
    return req


def parse_completion_request(body: dict, n_vocab: int | None = None) -> GenerationRequest:
    """A /v1/completions body -> GenerationRequest. `prompt`: a string, an array of one string, an array of
    token ids, or an array of one array of token ids."""
    prompt = body.get("prompt")
    if prompt is None:
        raise RequestError("'prompt' is required: a string or an array of token ids.", "prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not prompt:
            raise RequestError("'prompt' is an empty array: give a string or at least one token id.", "prompt")
        if any(isinstance(p, (str, list)) for p in prompt):
            raise RequestError("'prompt' holds several prompts; this server takes one per request.", "prompt")
        prompt = _token_ids(prompt, "prompt", n_vocab)
    elif not isinstance(prompt, str):
        raise RequestError(f"'prompt' must be a string or an array of token ids, got {_json_type(prompt)}.", "prompt")
    logprobs = _integer(body, "logprobs", None, lo=0, hi=20)
    best_of = _integer(body, "best_of", 1)
    if best_of != 1:
        raise RequestError(f"'best_of' = {best_of}: this server makes one choice per request.", "best_of")
    if body.get("suffix") not in (None, ""):
        raise RequestError("'suffix' (insertion) is not supported by this server.", "suffix")
    req = _common(body, "completion", n_vocab)
    req.prompt = prompt
    req.echo = _boolean(body, "echo", False)
    req.logprobs = logprobs
    return req


def _truthy(value: Any) -> bool:
    return value is not None and value is not False and value != 0


def parse_tokens(body: dict, n_vocab: int | None = None) -> list[int]:
    tokens = body.get("tokens")
    if not isinstance(tokens, list):
        raise RequestError(f"'tokens' must be an array of token ids, got {_json_type(tokens)}.", "tokens")
    return _token_ids(tokens, "tokens", n_vocab)


# -- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(n_prompt: int, n_generated: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_generated, "total_tokens": n_prompt + n_generated}


def finish_reason(reason: str) -> str:
    """The runner's reasons -> OpenAI's ("stop", "length", "tool_calls")."""
    return reason if reason in ("length", "tool_calls") else "stop"


def _token_entry(piece: bytes, logprob: float) -> dict:
    return {"token": piece.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(piece)}


def chat_logprobs(tokenizer, lps: list | None) -> dict | None:
    """engine.core.TokenLogprob list -> OpenAI's chat `logprobs` ({"content": [{token, logprob, bytes,
    top_logprobs}]})."""
    if lps is None:
        return None
    piece = lambda t: tokenizer.token_to_piece(int(t), True)  # noqa: E731
    return {"content": [{**_token_entry(piece(x.token), x.logprob),
                         "top_logprobs": [_token_entry(piece(t), lp) for t, lp in x.top]} for x in lps],
            "refusal": None}  # fmt: skip


def completion_logprobs(tokenizer, lps: list | None, offset: int = 0) -> dict | None:
    """engine.core.TokenLogprob list -> OpenAI's completions `logprobs` (tokens, token_logprobs,
    top_logprobs, text_offset)."""
    if lps is None:
        return None
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for x in lps:
        text = tokenizer.token_to_piece(int(x.token), True).decode("utf-8", "replace")
        out["tokens"].append(text)
        out["token_logprobs"].append(x.logprob)
        top: dict = {}
        for t, lp in x.top:
            top.setdefault(tokenizer.token_to_piece(int(t), True).decode("utf-8", "replace"), lp)
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def chat_response(id: str, created: int, model: str, text: str, reason: str, n_prompt: int, n_gen: int,
                  tool_calls: list | None = None, reasoning: str | None = None, logprobs: dict | None = None) -> dict:  # fmt: skip
    message: dict = {"role": "assistant", "content": text if text or not tool_calls else None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish_reason(reason),
        }],  # fmt: skip
        "usage": usage(n_prompt, n_gen),
    }


def chat_chunk(id: str, created: int, model: str, delta: dict | None, reason: str | None = None,
               usage_: dict | None = None, include_usage: bool = False, logprobs: dict | None = None) -> dict:  # fmt: skip
    chunk = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model}
    if delta is None:  # the usage chunk: no choices
        chunk["choices"] = []
    else:
        chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": logprobs,
                             "finish_reason": finish_reason(reason) if reason else None}]  # fmt: skip
    if include_usage:
        chunk["usage"] = usage_
    return chunk


def completion_response(id: str, created: int, model: str, text: str, reason: str, n_prompt: int,
                        n_gen: int, logprobs: dict | None = None) -> dict:  # fmt: skip
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(reason)}],
        "usage": usage(n_prompt, n_gen),
    }


def completion_chunk(id: str, created: int, model: str, text: str | None, reason: str | None = None,
                     usage_: dict | None = None, include_usage: bool = False, logprobs: dict | None = None) -> dict:  # fmt: skip
    chunk = {"id": id, "object": "text_completion", "created": created, "model": model}
    if text is None:
        chunk["choices"] = []
    else:
        chunk["choices"] = [{"index": 0, "text": text, "logprobs": logprobs,
                             "finish_reason": finish_reason(reason) if reason else None}]  # fmt: skip
    if include_usage:
        chunk["usage"] = usage_
    return chunk


def sse(data: dict | str) -> bytes:
    """One server-sent event: `data: {...}\\n\\n`."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode("utf-8", "replace")  # a lone surrogate becomes '?', never an exception


def now() -> int:
    return int(time.time())
