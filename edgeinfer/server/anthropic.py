"""Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`), without HTTP: a request
body -> the equivalent chat-completions body (validated by protocol.parse_chat_request, the one validation
layer), and a reply -> a Message or its stream events; errors in Anthropic's shape:

    {"type": "error", "error": {"type": "invalid_request_error", "message": "..."}}

    model, max_tokens (required), messages ({"role": "user" | "assistant", "content": str | blocks}),
    system (a string or text blocks), stop_sequences, temperature, top_p, top_k, stream, tools
    ({"name", "description", "input_schema"}), tool_choice ({"type": "auto" | "any" | "tool" | "none"}),
    thinking ({"type": "enabled", "budget_tokens": N}: the reasoning budget, for models that think)
    blocks: text; tool_use (assistant), tool_result (user); images and documents are refused (400).

Streamed: message_start, then per block content_block_start, content_block_delta (text_delta,
input_json_delta, thinking_delta)..., content_block_stop; message_delta (stop_reason, usage), message_stop.
Authentication: `x-api-key: KEY` (or `Authorization: Bearer KEY`), the key of --api-key.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from .protocol import RequestError, _json_type, text_parts

VERSION_HEADER = "anthropic-version"
# HTTP status -> Anthropic's error type
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error",
               413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}  # fmt: skip
PARAMS = {"messages": "messages", "max_tokens": "max_tokens", "stop": "stop_sequences"}
PASSTHROUGH = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
               "repeat_penalty", "speculative", "response_format", "grammar", "json_schema")  # fmt: skip


def error_body(message: str, status: int = 400) -> dict:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def from_request_error(e: RequestError) -> dict:
    """An OpenAI-dialect RequestError -> Anthropic's error body (the field named in the message)."""
    message = e.message
    if e.param and e.param not in message:
        message = f"{e.param}: {message}"
    return error_body(message, e.status)


def _blocks(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or an array of content blocks, got "
                           f"{_json_type(content)}.", "messages")  # fmt: skip
    for i, b in enumerate(content):
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise RequestError(f"{where}.content[{i}] must be a content block object with a 'type'.", "messages")
    return content


def _text(block: dict, where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise RequestError(f"{where}: a text block needs a string 'text'.", "messages")
    return text


def _result_text(content: Any, where: str) -> str:
    return text_parts(content, where, "messages", what="text blocks (tool results hold text only)")


def system_text(system: Any) -> str | None:
    if system is None:
        return None
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "".join(_text(b, f"system[{i}]") if isinstance(b, dict) and b.get("type") == "text"
                       else _bad_system(i) for i, b in enumerate(system))  # fmt: skip
    raise RequestError(f"'system' must be a string or an array of text blocks, got {_json_type(system)}.", "system")


def _bad_system(i: int) -> str:
    raise RequestError(f"system[{i}] must be a text block.", "system")


def chat_messages(body: dict) -> list[dict]:
    """`system` and `messages` -> chat messages (OpenAI's chat shape): tool_use blocks become the assistant's
    tool_calls, tool_result blocks become tool messages."""
    out: list[dict] = []
    system = system_text(body.get("system"))
    if system:
        out.append({"role": "system", "content": system})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"'messages' must be a non-empty array of messages, got {_json_type(messages)}.", "messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'.", "messages")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise RequestError(f"{where}.role must be 'user' or 'assistant'; got {role!r}.", "messages")
        if "content" not in m:
            raise RequestError(f"{where} has no 'content'.", "messages")
        texts: list[str] = []
        calls: list[dict] = []
        for j, b in enumerate(_blocks(m["content"], where)):
            kind, at = b["type"], f"{where}.content[{j}]"
            if kind == "text":
                texts.append(_text(b, at))
            elif kind == "tool_use" and role == "assistant":
                if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                    raise RequestError(f"{at}: a tool_use block needs string 'id' and 'name'.", "messages")
                args = json.dumps(b.get("input") or {}, ensure_ascii=False)
                calls.append({"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": args}})
            elif kind == "tool_result" and role == "user":
                if not isinstance(b.get("tool_use_id"), str):
                    raise RequestError(f"{at}: a tool_result block needs a string 'tool_use_id'.", "messages")
                text = _result_text(b.get("content"), at)
                if b.get("is_error"):
                    text = f"Error: {text}"
                out.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": text})
            elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                continue  # a previous turn's reasoning: not shown to the model again
            else:
                raise RequestError(f"{at} is a {kind!r} block, which this server does not read here (text, tool_use "
                                   "in assistant turns, tool_result in user turns).", "messages")  # fmt: skip
        if texts or not calls and not any(b["type"] == "tool_result" for b in _blocks(m["content"], where)):
            msg: dict = {"role": role, "content": "".join(texts)}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
        elif calls:
            out.append({"role": "assistant", "content": "", "tool_calls": calls})
    return out


def _tools(tools: Any) -> Any:
    if not isinstance(tools, list):
        raise RequestError(f"'tools' must be an array of tools, got {_json_type(tools)}.", "tools")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise RequestError(f"tools[{i}] must be an object with a string 'name' and an 'input_schema'.", "tools")
        if t.get("type") not in (None, "custom"):
            raise RequestError(f"tools[{i}] is a server tool ({t.get('type')!r}); this server runs client tools "
                               "(name, description, input_schema) only.", "tools")  # fmt: skip
        fn = {"name": t["name"], "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> tuple[Any, bool | None]:
    """Anthropic's tool_choice -> (chat's tool_choice, parallel_tool_calls or None)."""
    if choice is None:
        return None, None
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise RequestError("'tool_choice' must be {\"type\": \"auto\" | \"any\" | \"tool\" | \"none\"}.", "tool_choice")
    parallel = None if choice.get("disable_parallel_tool_use") is None else not choice["disable_parallel_tool_use"]
    kind = choice["type"]
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise RequestError("'tool_choice' of type 'tool' needs the tool's 'name'.", "tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[kind], parallel


def to_chat_body(body: dict, count_only: bool = False) -> dict:
    """A /v1/messages body -> the /v1/chat/completions body it means (parse_chat_request validates it)."""
    chat: dict = {"messages": chat_messages(body)}
    if not count_only:
        if body.get("max_tokens") is None:
            raise RequestError("'max_tokens' is required: the most tokens the reply may have.", "max_tokens")
        chat["max_tokens"] = body["max_tokens"]
    for name in PASSTHROUGH:
        if name in body:
            chat[name] = body[name]
    if body.get("stop_sequences") is not None:
        chat["stop"] = body["stop_sequences"]
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
    choice, parallel = _tool_choice(body.get("tool_choice"))
    if choice is not None and "tools" in chat:
        chat["tool_choice"] = choice
    if parallel is not None:
        chat["parallel_tool_calls"] = parallel
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled" and thinking.get("budget_tokens") is not None:
        chat["reasoning_budget"] = thinking["budget_tokens"]
    return chat


# -- the reply


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def stop_reason(finish_reason: str) -> str:
    return {"length": "max_tokens", "tool_calls": "tool_use"}.get(finish_reason, "end_turn")


def _input(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except ValueError:
        return {"_raw": arguments}  # never in a constrained call; kept rather than dropped


def message_object(mid: str, model: str, result, n_prompt: int, n_generated: int) -> dict:
    """A toolcalls.ChatResult -> Anthropic's Message."""
    content: list[dict] = []
    if result.reasoning:
        content.append({"type": "thinking", "thinking": result.reasoning, "signature": ""})
    if result.text or not result.tool_calls:
        content.append({"type": "text", "text": result.text})
    for c in result.tool_calls:
        content.append({"type": "tool_use", "id": c.id, "name": c.name, "input": _input(c.arguments)})
    return {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason(result.finish_reason), "stop_sequence": None,
            "usage": {"input_tokens": n_prompt, "output_tokens": n_generated}}  # fmt: skip


def event(data: dict) -> bytes:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {data['type']}\ndata: {text}\n\n".encode("utf-8", "replace")


class MessageStream:
    """A reply's ChatDeltas -> Anthropic's stream events, block by block (thinking, text, tool_use)."""

    def __init__(self, mid: str, model: str, n_prompt: int):
        self.mid, self.model, self.n_prompt = mid, model, n_prompt
        self.index = -1
        self.kind: str | None = None  # the open block's type

    def start(self) -> bytes:
        msg = {"id": self.mid, "type": "message", "role": "assistant", "model": self.model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": self.n_prompt, "output_tokens": 0}}  # fmt: skip
        return event({"type": "message_start", "message": msg}) + event({"type": "ping"})

    def _open(self, block: dict) -> bytes:
        out = self._close()
        self.index += 1
        self.kind = block["type"]
        return out + event({"type": "content_block_start", "index": self.index, "content_block": block})

    def _close(self) -> bytes:
        if self.kind is None:
            return b""
        out = b""
        if self.kind == "thinking":
            out = event({"type": "content_block_delta", "index": self.index,
                         "delta": {"type": "signature_delta", "signature": ""}})  # fmt: skip
        self.kind = None
        return out + event({"type": "content_block_stop", "index": self.index})

    def delta(self, d) -> bytes:
        out = b""
        if d.reasoning:
            if self.kind != "thinking":
                out += self._open({"type": "thinking", "thinking": "", "signature": ""})
            out += event({"type": "content_block_delta", "index": self.index,
                          "delta": {"type": "thinking_delta", "thinking": d.reasoning}})  # fmt: skip
        if d.content:
            if self.kind != "text":
                out += self._open({"type": "text", "text": ""})
            out += event({"type": "content_block_delta", "index": self.index,
                          "delta": {"type": "text_delta", "text": d.content}})  # fmt: skip
        tc = d.tool_call
        if tc is not None:
            if tc.id is not None or tc.name is not None:
                out += self._open({"type": "tool_use", "id": tc.id or _id("toolu"), "name": tc.name or "", "input": {}})
            if tc.arguments and self.kind == "tool_use":
                out += event({"type": "content_block_delta", "index": self.index,
                              "delta": {"type": "input_json_delta", "partial_json": tc.arguments}})  # fmt: skip
        return out

    def finish(self, finish_reason: str, n_generated: int) -> bytes:
        out = b""
        if self.index < 0:  # an empty reply is still one text block
            out += self._open({"type": "text", "text": ""})
        out += self._close()
        out += event({"type": "message_delta", "delta": {"stop_reason": stop_reason(finish_reason), "stop_sequence": None},
                      "usage": {"output_tokens": n_generated}})  # fmt: skip
        return out + event({"type": "message_stop"})

    def error(self, message: str, status: int = 500) -> bytes:
        return event(error_body(message, status))


__all__ = ["MessageStream", "chat_messages", "error_body", "from_request_error", "message_object", "stop_reason",
           "to_chat_body"]  # fmt: skip
