"""OpenAI's Responses API (`POST /v1/responses`), stateless, without HTTP: a request body -> the
equivalent chat-completions body (validated by protocol.parse_chat_request, the one validation layer),
and a reply -> a Response object or its typed stream events.

    input            a string, or items: messages ({"role", "content": str | [{"type": "input_text", ...}]}),
                     {"type": "function_call", "call_id", "name", "arguments"}, {"type": "function_call_output",
                     "call_id", "output"}
    instructions     a system message before the input
    max_output_tokens, temperature, top_p, tools ({"type": "function", "name", "parameters", ...}),
    tool_choice, parallel_tool_calls, text.format (text, json_object, json_schema), stream
    previous_response_id, conversation, store=true with background: refused (this server keeps no state)

Streamed, the events are those of OpenAI's: response.created, response.in_progress, then per output item
response.output_item.added, (response.content_part.added, response.output_text.delta...,
response.output_text.done, response.content_part.done | response.function_call_arguments.delta...,
response.function_call_arguments.done | response.reasoning_text.delta..., response.reasoning_text.done),
response.output_item.done, and response.completed (or response.incomplete when max_output_tokens cut it).
Errors use OpenAI's JSON shape.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from .protocol import RequestError, _json_type, text_parts

# chat-completions field -> the Responses field a user wrote (for error messages' `param`)
PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
          "response_format": "text.format"}  # fmt: skip
PASSTHROUGH = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
               "repeat_penalty", "stop", "logit_bias", "parallel_tool_calls", "reasoning_budget", "speculative",
               "grammar", "json_schema")  # fmt: skip


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


_INPUT_PARTS = {"input_text": "text", "output_text": "text", "text": "text", "refusal": "refusal"}


def _text_of(content: Any, where: str) -> str:
    return text_parts(content, where, "input", _INPUT_PARTS, what="text parts (input_text, output_text)")


def input_messages(body: dict) -> list[dict]:
    """`instructions` and `input` -> chat messages (OpenAI's chat shape)."""
    messages: list[dict] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise RequestError(f"'instructions' must be a string, got {_json_type(instructions)}.", "instructions")
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if items is None:
        raise RequestError("'input' is required: a string or an array of input items.", "input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    if not isinstance(items, list) or not items:
        raise RequestError(f"'input' must be a string or a non-empty array of items, got {_json_type(items)}.", "input")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise RequestError(f"{where} must be an object (a message or a function call item).", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise RequestError(f"{where}.role must be user, assistant, system or developer; got {role!r}.", "input")
            messages.append({"role": role, "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            name, args, call_id = item.get("name"), item.get("arguments", ""), item.get("call_id") or item.get("id")
            if not isinstance(name, str) or not isinstance(args, str) or not isinstance(call_id, str):
                raise RequestError(f"{where}: a function_call item needs string 'call_id', 'name' and 'arguments'.",
                                   "input")  # fmt: skip
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise RequestError(f"{where}: a function_call_output item needs a string 'call_id'.", "input")
            if not isinstance(output, str):
                output = _text_of(output, where) if isinstance(output, list) else json.dumps(output)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # a previous turn's reasoning: not shown to the model again
        else:
            raise RequestError(f"{where} is of type {kind!r}; this server reads message, function_call and "
                               "function_call_output items.", "input")  # fmt: skip
    return messages


def _tools(tools: Any) -> Any:
    """Responses' flat function tools -> chat's {"type": "function", "function": {...}}."""
    if not isinstance(tools, list):
        return tools  # parse_tools names the error
    out = []
    for i, t in enumerate(tools):
        if isinstance(t, dict) and t.get("type") == "function" and "function" not in t:
            fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}
            out.append({"type": "function", "function": fn})
        elif isinstance(t, dict) and t.get("type") not in (None, "function"):
            raise RequestError(f"tools[{i}] is of type {t.get('type')!r}; this server runs function tools only.",
                               "tools")  # fmt: skip
        else:
            out.append(t)
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _format(body: dict) -> dict | None:
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        raise RequestError(f"'text' must be an object, got {_json_type(text)}.", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise RequestError(f"'text.format' must be an object, got {_json_type(fmt)}.", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        inner = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": inner}
    raise RequestError(f"'text.format.type' must be text, json_object or json_schema; got {kind!r}.", "text.format")


def to_chat_body(body: dict) -> dict:
    """A /v1/responses body -> the /v1/chat/completions body it means (parse_chat_request validates it)."""
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise RequestError(f"'{name}': this server is stateless and keeps no responses; send the whole "
                               "conversation in 'input'.", name)  # fmt: skip
    if body.get("background"):
        raise RequestError("'background': this server answers while the request is open; leave it out.", "background")
    chat: dict = {"messages": input_messages(body)}
    for name in PASSTHROUGH:
        if name in body:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = _format(body)
    if fmt is not None:
        chat["response_format"] = fmt
    return chat  # top_logprobs and include[] are not reported in this dialect (the output's logprobs stay [])


def rename_error(e: RequestError) -> RequestError:
    """A chat-completions RequestError in the Responses' field names."""
    if e.param in PARAMS:
        e.param = PARAMS[e.param]
        e.message = e.message.replace("'messages'", "'input'").replace("'max_tokens'", "'max_output_tokens'")
        e.message = e.message.replace("messages[", "input[")
    return e


# -- the response


def usage(n_prompt: int, n_generated: int, n_reasoning: int = 0) -> dict:
    return {"input_tokens": n_prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": n_generated,
            "output_tokens_details": {"reasoning_tokens": n_reasoning}, "total_tokens": n_prompt + n_generated}  # fmt: skip


def response_object(rid: str, created: int, model: str, body: dict, output: list[dict], status: str,
                    usage_: dict | None = None) -> dict:  # fmt: skip
    """The Response object (status "in_progress", "completed" or "incomplete")."""
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    return {
        "id": rid, "object": "response", "created_at": created, "status": status, "model": model,
        "output": output, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"), "top_p": body.get("top_p"),
        "tools": body.get("tools") or [], "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "text": {"format": fmt or {"type": "text"}}, "metadata": body.get("metadata") or {},
        "previous_response_id": None, "reasoning": None, "store": False, "truncation": "disabled",
        "usage": usage_,
    }  # fmt: skip


def message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed" else []}  # fmt: skip


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}  # fmt: skip


def reasoning_item(item_id: str, text: str) -> dict:
    return {"type": "reasoning", "id": item_id, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}] if text else []}  # fmt: skip


def output_items(result) -> list[dict]:
    """A toolcalls.ChatResult -> the Response's output items."""
    out = []
    if result.reasoning:
        out.append(reasoning_item(_id("rs"), result.reasoning))
    if result.text or not result.tool_calls:
        out.append(message_item(_id("msg"), result.text))
    for c in result.tool_calls:
        out.append(call_item(_id("fc"), c.id, c.name, c.arguments))
    return out


def status_of(finish_reason: str) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def event(data: dict) -> bytes:
    """One typed server-sent event: `event: <type>` and its JSON."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {data['type']}\ndata: {text}\n\n".encode("utf-8", "replace")


class ResponseStream:
    """Turns a reply's ChatDeltas into the Responses stream events, item by item (reasoning, message,
    function calls), numbering them (sequence_number)."""

    def __init__(self, rid: str, created: int, model: str, body: dict):
        self.rid, self.created, self.model, self.body = rid, created, model, body
        self.seq = 0
        self.output: list[dict] = []  # finished items
        self.cur: dict | None = None  # the open item: {"kind", "id", "text", ...}
        self.calls: dict[int, dict] = {}

    def _ev(self, type_: str, **fields) -> bytes:
        data = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event(data)

    def start(self) -> bytes:
        r = response_object(self.rid, self.created, self.model, self.body, [], "in_progress")
        return self._ev("response.created", response=r) + self._ev("response.in_progress", response=r)

    def _open(self, kind: str, **extra) -> bytes:
        out = self._close()
        idx = len(self.output)
        if kind == "message":
            item_id = _id("msg")
            self.cur = {"kind": kind, "id": item_id, "text": "", "index": idx}
            out += self._ev("response.output_item.added", output_index=idx, item=message_item(item_id, "", "in_progress"))
            out += self._ev("response.content_part.added", item_id=item_id, output_index=idx, content_index=0,
                            part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})  # fmt: skip
        elif kind == "reasoning":
            item_id = _id("rs")
            self.cur = {"kind": kind, "id": item_id, "text": "", "index": idx}
            out += self._ev("response.output_item.added", output_index=idx, item=reasoning_item(item_id, ""))
        else:
            item_id = _id("fc")
            self.cur = {"kind": kind, "id": item_id, "text": "", "index": idx, **extra}
            out += self._ev("response.output_item.added", output_index=idx,
                            item=call_item(item_id, extra["call_id"], extra["name"], "", "in_progress"))  # fmt: skip
        return out

    def _close(self) -> bytes:
        c, self.cur = self.cur, None
        if c is None:
            return b""
        idx, item_id, text = c["index"], c["id"], c["text"]
        if c["kind"] == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item = message_item(item_id, text)
            out = self._ev("response.output_text.done", item_id=item_id, output_index=idx, content_index=0, text=text,
                           logprobs=[])  # fmt: skip
            out += self._ev("response.content_part.done", item_id=item_id, output_index=idx, content_index=0, part=part)
        elif c["kind"] == "reasoning":
            item = reasoning_item(item_id, text)
            out = self._ev("response.reasoning_text.done", item_id=item_id, output_index=idx, content_index=0, text=text)
        else:
            item = call_item(item_id, c["call_id"], c["name"], text)
            out = self._ev("response.function_call_arguments.done", item_id=item_id, output_index=idx,
                           name=c["name"], arguments=text)  # fmt: skip
        self.output.append(item)
        return out + self._ev("response.output_item.done", output_index=idx, item=item)

    def delta(self, d) -> bytes:
        """One toolcalls.ChatDelta -> events."""
        out = b""
        if d.reasoning:
            if self.cur is None or self.cur["kind"] != "reasoning":
                out += self._open("reasoning")
            self.cur["text"] += d.reasoning
            out += self._ev("response.reasoning_text.delta", item_id=self.cur["id"], output_index=self.cur["index"],
                            content_index=0, delta=d.reasoning)  # fmt: skip
        if d.content:
            if self.cur is None or self.cur["kind"] != "message":
                out += self._open("message")
            self.cur["text"] += d.content
            out += self._ev("response.output_text.delta", item_id=self.cur["id"], output_index=self.cur["index"],
                            content_index=0, delta=d.content, logprobs=[])  # fmt: skip
        tc = d.tool_call
        if tc is not None:
            if tc.id is not None or tc.name is not None:  # a call starts
                out += self._open("call", call_id=tc.id or _id("call"), name=tc.name or "", n=tc.index)
            if tc.arguments and self.cur is not None and self.cur["kind"] == "call":
                self.cur["text"] += tc.arguments
                out += self._ev("response.function_call_arguments.delta", item_id=self.cur["id"],
                                output_index=self.cur["index"], delta=tc.arguments)  # fmt: skip
        return out

    def finish(self, finish_reason: str, n_prompt: int, n_generated: int) -> bytes:
        out = b""
        if not self.output and self.cur is None:  # an empty reply is still one message
            out += self._open("message")
        out += self._close()
        status = status_of(finish_reason)
        r = response_object(self.rid, self.created, self.model, self.body, self.output, status,
                            usage(n_prompt, n_generated))  # fmt: skip
        return out + self._ev("response.completed" if status == "completed" else "response.incomplete", response=r)

    def error(self, message: str, code: str = "server_error") -> bytes:
        r = response_object(self.rid, self.created, self.model, self.body, self.output, "failed")
        r["error"] = {"code": code, "message": message}
        return self._ev("error", code=code, message=message, param=None) + self._ev("response.failed", response=r)


__all__ = ["ResponseStream", "input_messages", "output_items", "rename_error", "response_object", "status_of",
           "to_chat_body", "usage"]  # fmt: skip
