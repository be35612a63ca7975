"""Tool calling and reasoning, above the engine: prompts that show a model its tools, grammars that make
it call one, and an incremental parser that splits its reply into content, reasoning and tool calls.

    plan = plan_chat(llm.chat_template, llm.tokenizer, messages, tools=tools, tool_choice="required")
    ids = plan.prompt_ids                          # the model's own template, tools and tool results rendered
    grammar = plan.grammar                         # None, or what every token must obey (engine/constrain.py)
    parser = plan.parser()
    for piece in pieces: deltas = parser.feed(piece)        # ChatDelta: content, reasoning, tool-call parts
    deltas = parser.finish(); parser.tool_calls, parser.content, parser.reasoning

Formats (chosen from the template's family): "hermes" (Hermes, Qwen, any ChatML template:
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`), "llama3" (`{"name": ..., "parameters": {...}}`,
optionally after `<|python_tag|>`), "mistral" (`[TOOL_CALLS] [{"name": ..., "arguments": {...}}]`),
"gemma4" (`<|tool_call>call:NAME{key:<|"|>text<|"|>,n:1}<tool_call|>`, gemma_calls.py), "harmony" (gpt-oss: messages `<|channel|>analysis|commentary|final<|message|>...`, a call being a commentary
message to `functions.NAME` whose text is its JSON arguments) and "generic" (a reply that is one JSON
object `{"tool_calls": [{"name": ..., "arguments": {...}}]}`). A
template that renders `tools` itself gets them; one that does not gets them described in the system
message, in its family's call format. Tool-result messages (role "tool") and assistant messages with
`tool_calls` are rendered natively where the template can, else as text of the family's format.

Reasoning: text between `<think>` and `</think>` (the template's generation prompt may open the block),
Gemma 4's `<|channel>thought ...<channel|>` or a harmony reply's analysis messages, is reasoning, never
content. A reasoning budget (tokens) closes the block when it runs out, by forcing
the closing tag's tokens; a grammar (response_format, a required tool call) applies after the block.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import gemma_calls
from .engine.constrain import Grammar, GrammarError
from .errors import EdgeInferError
from .tokenizer.chat import ChatTemplate, ChatTemplateError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
FAMILIES = ("hermes", "llama3", "mistral", "gemma4", "harmony", "generic")
G_CALL, G_CALL_END = "<|tool_call>", "<tool_call|>"  # Gemma 4: <|tool_call>call:NAME{...}<tool_call|>
G_THINK_OPEN, G_THINK_CLOSE = "<|channel>", "<channel|>"  # Gemma 4: <|channel>thought\n...<channel|>
# gpt-oss's harmony format: a message is <|start|>ROLE[ to=RECIPIENT]<|channel|>CHANNEL[ json]<|message|>TEXT,
# ended by <|end|> (more follows), <|call|> or <|return|> (both end the generation)
H_START, H_CHANNEL, H_MESSAGE, H_END, H_CALL, H_RETURN = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>",
                                                          "<|call|>", "<|return|>")  # fmt: skip
H_ANALYSIS = H_CHANNEL + "analysis" + H_MESSAGE  # a reasoning message's opening, after <|start|>assistant
H_FINAL = H_END + H_START + "assistant" + H_CHANNEL + "final" + H_MESSAGE  # reasoning closed, the answer next


class ToolError(GrammarError):
    """Tools or tool_choice of the wrong shape (HTTP 400 naming the field)."""


# ---------------------------------------------------------------------------------------------------
# results


@dataclass
class ToolCall:
    """A call the model made: `arguments` is the JSON text of the arguments, as OpenAI gives it."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def parsed_arguments(self) -> Any:
        return json.loads(self.arguments)


@dataclass
class ToolCallDelta:
    """A piece of the `index`-th call: its start (id and name), then fragments of its arguments' text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_openai(self) -> dict:
        out: dict = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        fn: dict = {}
        if self.name is not None:
            fn["name"] = self.name
        if self.arguments or self.name is not None:
            fn["arguments"] = self.arguments
        out["function"] = fn
        return out


@dataclass
class ChatDelta:
    """One piece of a streamed reply: content text, reasoning text, a tool-call part, the end (finish_reason),
    and the log-probabilities of the tokens it came from (when asked for)."""

    content: str = ""
    reasoning: str = ""
    tool_call: ToolCallDelta | None = None
    finish_reason: str | None = None
    logprobs: list | None = None


@dataclass
class ChatResult:
    """A reply: its content text, tool calls, reasoning, per-token log-probabilities (engine.core.TokenLogprob,
    when asked for) and why it ended ("stop", "length", "tool_calls")."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning: str = ""
    logprobs: list | None = None
    finish_reason: str = "stop"

    def __str__(self) -> str:
        return self.text


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


# ---------------------------------------------------------------------------------------------------
# request fields


def parse_tools(tools: Any, field_name: str = "tools") -> list[dict]:
    """OpenAI's `tools` -> a list of {"name", "description", "parameters"} (ToolError naming the field)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ToolError(f"'{field_name}' must be an array of tools.", field_name)
    out, seen = [], set()
    for i, t in enumerate(tools):
        where = f"{field_name}[{i}]"
        if not isinstance(t, dict):
            raise ToolError(f"'{where}' must be an object {{\"type\": \"function\", \"function\": {{...}}}}.", where)
        if t.get("type", "function") != "function":
            raise ToolError(f"'{where}.type' must be \"function\", got {t.get('type')!r}.", f"{where}.type")
        fn = t.get("function", t if "name" in t else None)
        if not isinstance(fn, dict):
            raise ToolError(f"'{where}.function' must be an object with a 'name'.", f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise ToolError(f"'{where}.function.name' must be a non-empty string (at most 64 characters).",
                            f"{where}.function.name")  # fmt: skip
        if name in seen:
            raise ToolError(f"'{where}.function.name' {name!r} is given twice.", f"{where}.function.name")
        seen.add(name)
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise ToolError(f"'{where}.function.parameters' must be a JSON Schema object.", f"{where}.function.parameters")
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise ToolError(f"'{where}.function.description' must be a string.", f"{where}.function.description")
        out.append({"name": name, "description": desc or "", "parameters": params})
    return out


def parse_tool_choice(choice: Any, tools: list[dict], field_name: str = "tool_choice") -> str:
    """"auto" | "none" | "required" | a function's name (from {"type": "function", "function": {"name"}})."""
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise ToolError(f"'{field_name}' must be \"auto\", \"none\", \"required\" or a named function, got {choice!r}.",
                            field_name)  # fmt: skip
        if choice == "required" and not tools:
            raise ToolError(f"'{field_name}' is \"required\" but no 'tools' are given.", field_name)
        return choice
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        if not isinstance(name, str):
            raise ToolError(f"'{field_name}' must name a function: {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}.",
                            field_name)  # fmt: skip
        if name not in {t["name"] for t in tools}:
            raise ToolError(f"'{field_name}' names {name!r}, which is not among the 'tools'.", field_name)
        return name
    raise ToolError(f"'{field_name}' must be a string or an object.", field_name)


# ---------------------------------------------------------------------------------------------------
# the template's family and what it renders natively

_CAPS: dict[str, dict] = {}
_PROBE_FN, _PROBE_RESULT = "edgeinfer_probe_fn", "edgeinfer_probe_result"


def detect_family(template: ChatTemplate, token_texts: set[str] | frozenset = frozenset()) -> str:
    src = template.source
    if "[TOOL_CALLS]" in src or "[TOOL_CALLS]" in token_texts:
        return "mistral"
    if H_CHANNEL in src and H_MESSAGE in src:
        return "harmony"
    if G_CALL in src and G_CALL_END in src:
        return "gemma4"
    if "<tool_call>" in src:
        return "hermes"
    if "<|python_tag|>" in src or template.name == "llama3" or ("<|start_header_id|>" in src and "tools" in src):
        return "llama3"
    if "<|im_start|>" in src or template.name == "chatml":
        return "hermes"
    return "generic"


def template_caps(template: ChatTemplate) -> dict:
    """What the template renders itself: tools, assistant tool_calls, role "tool" messages; whether it
    knows <think>. Probed once per template text."""
    caps = _CAPS.get(template.source)
    if caps is not None:
        return caps
    tool = {"type": "function", "function": {"name": _PROBE_FN, "description": "probe",
                                             "parameters": {"type": "object", "properties": {}}}}  # fmt: skip
    call = {"id": "call_probe", "type": "function", "function": {"name": _PROBE_FN, "arguments": {}}}

    def renders(messages, needle, **kw) -> bool:
        try:
            return needle in template.render(messages, add_generation_prompt=False, **kw)
        except (ChatTemplateError, EdgeInferError):
            return False

    user = {"role": "user", "content": "hi"}
    caps = {
        "tools": renders([user], _PROBE_FN, tools=[tool]),
        "tool_calls": renders([user, {"role": "assistant", "content": "", "tool_calls": [call]}], _PROBE_FN),
        "tool_role": any(renders([user, {"role": "assistant", "content": content, **extra},  # some templates
                                  {"role": "tool", "content": _PROBE_RESULT, "tool_call_id": "call_probe"}], _PROBE_RESULT)
                         for content, extra in (("ok", {}), ("", {"tool_calls": [call]}))),  # want the call first
        "think": THINK_OPEN in template.source or G_THINK_OPEN in template.source,
    }  # fmt: skip
    _CAPS[template.source] = caps
    return caps


def _tools_json(tools: list[dict]) -> list[dict]:
    return [{"type": "function", "function": t} for t in tools]


def tools_system_text(family: str, tools: list[dict]) -> str:
    """How a template that cannot render tools tells the model about them, in the family's call format."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in _tools_json(tools))
    if family == "hermes":
        return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
                f"{lines}\n</tools>\n\nFor each function call, return a json object with function name and "
                "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')  # fmt: skip
    if family == "llama3":
        return ("You have access to the following functions. To call a function, respond with only a JSON object "
                'of the form {"name": function name, "parameters": dictionary of argument name and its value}.\n\n'
                f"{lines}")  # fmt: skip
    if family == "harmony":
        return ("You can call these functions:\n" f"{lines}\n\n"
                "Calls to these tools must go to the commentary channel: 'functions'.")
    if family == "gemma4":
        return ("You can call these functions:\n" f"{lines}\n\n"
                f"To call one, write {G_CALL}call:NAME{{key:value,...}}{G_CALL_END}.")
    if family == "mistral":
        return ("You can call these functions:\n" f"{lines}\n\n"
                'To call functions, reply with [TOOL_CALLS] followed by a JSON array '
                '[{"name": function name, "arguments": {...}}].')  # fmt: skip
    return ("You can call these tools:\n" f"{lines}\n\n"
            "To call tools, reply with only a JSON object: "
            '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}. '
            "Otherwise reply normally.")  # fmt: skip


def format_calls(family: str, calls: list[dict]) -> str:
    """Assistant tool calls as the text the model would have written, for templates that cannot render them."""
    objs = []
    for c in calls:
        fn = c.get("function", c) if isinstance(c, dict) else {}
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        objs.append((fn.get("name", ""), args))
    if family == "hermes":
        return "\n".join("<tool_call>\n" + json.dumps({"name": n, "arguments": a}, ensure_ascii=False) + "\n</tool_call>"
                         for n, a in objs)  # fmt: skip
    if family == "llama3":
        return "; ".join(json.dumps({"name": n, "parameters": a}, ensure_ascii=False) for n, a in objs)
    if family == "mistral":
        return "[TOOL_CALLS] " + json.dumps([{"name": n, "arguments": a} for n, a in objs], ensure_ascii=False)
    if family == "gemma4":
        return "".join(f"{G_CALL}call:{n}{gemma_calls.from_value(a if isinstance(a, dict) else {})}{G_CALL_END}"
                       for n, a in objs)  # fmt: skip
    if family == "harmony":
        return "".join(f"{H_START}assistant to=functions.{n}{H_CHANNEL}commentary json{H_MESSAGE}"
                       f"{json.dumps(a, ensure_ascii=False)}{H_CALL}" for n, a in objs)  # fmt: skip
    return json.dumps({"tool_calls": [{"name": n, "arguments": a} for n, a in objs]}, ensure_ascii=False)


def render_messages(template: ChatTemplate, messages: list[dict], tools: list[dict], family: str,
                    add_generation_prompt: bool = True, template_kwargs: dict | None = None) -> str:  # fmt: skip
    """The prompt text: the template's own rendering of tools, tool calls and tool results where it has
    one, else the family's text for them (the tools in the system message, results as user turns)."""
    caps = template_caps(template)
    msgs = []
    for m in messages:
        m = dict(m)
        if family == "harmony" and m.get("reasoning_content") and not (m.get("tool_calls") and m.get("content")):
            m.setdefault("thinking", m["reasoning_content"])  # gpt-oss's template reads its analysis there
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                c = copy.deepcopy(c)
                fn = c.get("function") if isinstance(c, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    try:  # templates read arguments as a mapping (llama.cpp passes them so too)
                        fn["arguments"] = json.loads(fn["arguments"])
                    except json.JSONDecodeError:
                        pass
                calls.append(c)
            m["tool_calls"] = calls
            if m.get("content") is None:
                m["content"] = ""
            if not caps["tool_calls"]:
                text = format_calls(family, calls)
                m = {"role": "assistant", "content": (m["content"] + "\n" if m["content"] else "") + text}
        if m.get("role") == "tool" and not caps["tool_role"]:
            content = m.get("content") or ""
            text = f"<tool_response>\n{content}\n</tool_response>" if family == "hermes" else f"Tool result: {content}"
            m = {"role": "user", "content": text}
        if msgs and m["role"] == "user" and msgs[-1]["role"] == "user" and not caps["tool_role"]:
            msgs[-1] = {"role": "user", "content": msgs[-1]["content"] + "\n" + m["content"]}
            continue
        msgs.append(m)
    kwargs = dict(template_kwargs or {})
    if tools:
        if caps["tools"]:
            kwargs["tools"] = _tools_json(tools)
        else:
            text = tools_system_text(family, tools)
            if msgs and msgs[0]["role"] == "system":
                msgs[0] = {**msgs[0], "content": (msgs[0].get("content") or "") + "\n\n" + text}
            else:
                msgs.insert(0, {"role": "system", "content": text})
    return template.render(msgs, add_generation_prompt=add_generation_prompt, **kwargs)


# ---------------------------------------------------------------------------------------------------
# grammars


def _special_id(tokenizer, text: str) -> int | None:
    from .tokenizer.vocab import TokenAttr

    i = tokenizer.vocab.token_to_id.get(text)
    if i is None:
        return None
    attr = int(tokenizer.vocab.attrs[i])
    return i if attr & (TokenAttr.CONTROL | TokenAttr.USER_DEFINED) else None


def _lit(tokenizer, text: str) -> str:
    """A Lark literal for a marker: the special token itself when the vocabulary has one."""
    i = _special_id(tokenizer, text) if tokenizer is not None else None
    return f"<[{i}]>" if i is not None else json.dumps(text)


def _call_schema(tool: dict, args_key: str) -> dict:
    return {"type": "object", "properties": {"name": {"const": tool["name"]}, args_key: tool["parameters"]},
            "required": ["name", args_key], "additionalProperties": False}  # fmt: skip


def _compact(schema: dict) -> str:
    s = dict(schema)
    s["x-guidance"] = {"whitespace_flexible": False}
    return json.dumps(s, ensure_ascii=False)


def tool_call_lark(family: str, tools: list[dict], parallel: bool, tokenizer=None) -> str:
    """Lark rules (rule `calls`) for one call (or several, with `parallel`) of `tools`, in the family's format,
    each call's arguments obeying its function's parameters schema."""
    key = "parameters" if family == "llama3" else "arguments"
    schemas = [_call_schema(t, key) for t in tools]
    one = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    if family == "hermes":
        o, c = _lit(tokenizer, "<tool_call>"), _lit(tokenizer, "</tool_call>")
        rules = f'call: {o} "\\n" %json {_compact(one)} "\\n" {c}\n'
        rules += 'calls: call ("\\n" call)*\n' if parallel else "calls: call\n"
        return rules
    if family == "mistral":
        arr = {"type": "array", "items": one, "minItems": 1}
        if not parallel:
            arr["maxItems"] = 1
        return f'calls: {_lit(tokenizer, "[TOOL_CALLS]")} " " %json {_compact(arr)}\n'
    if family == "gemma4":
        q = _lit(tokenizer, gemma_calls.QUOTE)
        rules, alts = "", []
        for i, t in enumerate(tools):
            rules += gemma_calls.schema_lark(t["parameters"], q, f"args{i}")
            alts.append(f'({_lit(tokenizer, G_CALL)} "call:{t["name"]}" args{i} {_lit(tokenizer, G_CALL_END)})')
        rules += "call: " + " | ".join(alts) + "\n"
        return rules + ("calls: call+\n" if parallel else "calls: call\n")
    if family == "harmony":  # after the generation prompt's <|start|>assistant, as the template renders calls
        ch, msg = _lit(tokenizer, H_CHANNEL), _lit(tokenizer, H_MESSAGE)
        alts = [f'" to=functions.{t["name"]}" {ch} "commentary json" {msg} %json {_compact(t["parameters"])}'
                for t in tools]
        return "calls: " + " | ".join(f"({a})" for a in alts) + "\n"  # one call a message: <|call|> ends it
    if family == "llama3":
        rules = f"call: %json {_compact(one)}\n"
        rules += 'calls: call ("; " call)*\n' if parallel else "calls: call\n"
        return rules
    arr = {"type": "array", "items": one, "minItems": 1}
    if not parallel:
        arr["maxItems"] = 1
    return f'calls: %json {_compact({"type": "object", "properties": {"tool_calls": arr}, "required": ["tool_calls"], "additionalProperties": False})}\n'  # noqa: E501


def _compose(start: str, rules: str, main: Grammar | None) -> Grammar:
    """A Lark grammar `start` (+ rules) that may reference `main` (an existing Grammar) as `main_g`."""
    lark = f"start: {start}\n{rules}"
    if main is None:
        return Grammar.lark(lark, "tools")
    text = main.text
    try:
        top = json.loads(text)
        grammars = top["grammars"]
    except (json.JSONDecodeError, KeyError, TypeError):
        grammars = [{"lark_grammar": text}]
    grammars = [dict(g) for g in grammars]
    grammars[0]["name"] = "main_g"
    lark += "main_g: @main_g\n"
    return Grammar._checked("lark", json.dumps({"grammars": [{"lark_grammar": lark}, *grammars]}), "tools")


def tools_grammar(family: str, tools: list[dict], choice: str, parallel: bool, tokenizer=None,
                  grammar: Grammar | None = None) -> Grammar | None:  # fmt: skip
    """The grammar a reply obeys: "required" -> a call of any tool; a name -> a call of that one; "auto"
    with a response grammar -> a call, or a reply obeying it; else `grammar` as given."""
    if choice in ("auto", "none") or not tools:
        if family == "harmony" and grammar is not None:  # the reply is the final channel's message
            final = f'{_lit(tokenizer, H_CHANNEL)} "final" {_lit(tokenizer, H_MESSAGE)} main_g'
            if choice == "auto" and tools:
                return _compose("calls | final", tool_call_lark(family, tools, parallel, tokenizer) + f"final: {final}\n",
                                grammar)  # fmt: skip
            return _compose("final", f"final: {final}\n", grammar)
        if grammar is not None and choice == "auto" and tools:
            return _compose("calls | main_g", tool_call_lark(family, tools, parallel, tokenizer), grammar)
        return grammar
    if grammar is not None:
        raise ToolError("Give either a response_format/grammar or a required tool_choice, not both: a reply "
                        "cannot be both.", "tool_choice")  # fmt: skip
    chosen = tools if choice == "required" else [t for t in tools if t["name"] == choice]
    return _compose("calls", tool_call_lark(family, chosen, parallel and choice == "required", tokenizer), None)


# ---------------------------------------------------------------------------------------------------
# reasoning: a constraint that leaves the think block free, closes it when the budget runs out, and
# applies the reply's grammar only after it


class ReasoningGrammar:
    """Grammar-like (what the engine reads: `matcher(tokenizer)`, `source`): reasoning between <think>
    and </think> is free (at most `budget` tokens, then the closing tag is forced); `after` (a Grammar,
    or None) constrains what follows. `opened`: the prompt already opened the block."""

    def __init__(self, after: Grammar | None, budget: int | None, opened: bool, open_text: str = THINK_OPEN,
                 close_text: str = THINK_CLOSE, forced_close: str | None = None):  # fmt: skip
        self.after = after
        self.budget = budget
        self.opened = opened
        # the block: open_text ... close_text (the model's own end); forced_close: what the budget forces
        self.open_text, self.close_text = open_text, close_text
        self.forced_close = forced_close if forced_close is not None else close_text
        self.source = f"reasoning+{after.source}" if after is not None else "reasoning"

    def matcher(self, tokenizer) -> "ReasoningConstraint":
        return ReasoningConstraint(self, tokenizer)


class ReasoningConstraint:
    def __init__(self, g: ReasoningGrammar, tokenizer):
        self.g = g
        self.tok = tokenizer
        self.n_vocab = tokenizer.n_vocab
        self.inner = g.after.matcher(tokenizer) if g.after is not None else None
        self.close_ids = self._ids(g.forced_close)
        self.open_ids = self._ids(g.open_text)
        # "start": may open a block; "think": inside one; "closing": the close is being forced; "after"
        self.state = "think" if g.opened else "start"
        self.n_think = 0
        self.text = ""  # the block's text so far (to see the model close it)
        self.forced: list[int] = []
        self.n_consumed = 0

    def _ids(self, text: str) -> list[int]:
        i = _special_id(self.tok, text)
        if i is not None:
            return [i]
        return self.tok.encode(text, add_special=False, parse_special=_special_id(self.tok, H_CHANNEL) is not None
                               and H_CHANNEL in text)  # harmony's markers are its special tokens  # fmt: skip

    def _only(self, logits: np.ndarray, token: int) -> np.ndarray:
        out = np.full(logits.shape, -np.inf, dtype=np.float32)
        out[token] = logits[token]
        return out

    def mask(self, logits: np.ndarray) -> np.ndarray:
        if self.state in ("closing", "opening"):
            return self._only(logits, self.forced[0])
        if self.state == "think":
            if self.g.budget is not None and self.n_think >= self.g.budget:
                return self._only(logits, self.close_ids[0])
            return logits
        if self.state == "start":
            if self.inner is None:
                return logits
            out = self.inner.mask(logits)  # the reply's grammar, or the opening of a think block
            out[self.open_ids[0]] = logits[self.open_ids[0]]
            return out
        return self.inner.mask(logits) if self.inner is not None else logits

    def consume(self, token: int) -> None:
        token = int(token)
        self.n_consumed += 1
        if self.state == "closing":
            self.forced.pop(0)
            if not self.forced:
                self.state = "after"
            return
        if self.state == "think":
            if self.g.budget is not None and self.n_think >= self.g.budget:  # the forced close began
                self.forced = list(self.close_ids[1:])
                self.state = "closing" if self.forced else "after"
                return
            self.n_think += 1
            self.text += self.tok.decode([token])
            if self.g.close_text in self.text:
                self.state = "after"
            return
        if self.state == "start" and self.inner is None and len(self.open_ids) > 1:
            # no grammar: the model is free; a block is open once its text spelled the opening (harmony)
            self.text += self.tok.decode([token])
            if self.text.startswith(self.g.open_text):
                self.state, self.text = "think", ""
            elif not self.g.open_text.startswith(self.text):
                self.state = "after"
            return
        if self.state == "start":
            if token == self.open_ids[0]:
                rest = list(self.open_ids[1:])
                if rest:  # the opening tag's other tokens (when the model starts one, it finishes it)
                    self.forced, self.state = rest, "opening"
                else:
                    self.state = "think"
                return
            self.state = "after"
        if self.state == "opening":
            self.forced.pop(0)
            if not self.forced:
                self.state = "think"
            return
        if self.inner is not None:
            self.inner.consume(token)

    @property
    def done(self) -> bool:
        return self.state == "after" and self.inner is not None and self.inner.done




# ---------------------------------------------------------------------------------------------------
# the incremental reply parser


class _CallScanner:
    """Reads JSON text character by character and finds tool calls in it: objects with a "name" (string)
    and "arguments" (or "parameters") at `call_depths` (1: the top object is a call; 2: the items of a
    top array; "tool_calls": the items of the top object's "tool_calls" array, or the top object itself).
    Emits ("start", name) when a call's arguments begin (its name known), ("args", text) fragments, and
    ("end", None) when the call's object closes; `complete` once the top value is closed."""

    def __init__(self, mode: str):
        self.mode = mode  # "object", "array", "generic"
        self.stack: list[dict] = []  # frames: {"t": "{" or "[", "key": str|None, "call": dict|None, "field": ...}
        self.in_str = False
        self.esc = False
        self.str_buf = ""
        self.complete = False
        self.raw = ""
        self.calls: list[dict] = []  # {"name", "args", "started"}
        self.out: list[tuple[str, Any]] = []
        self.capture: dict | None = None  # the call whose arguments are being read: {"call", "depth"}
        self.expect_value_for: str | None = None
        self.prim = ""  # a primitive arguments value being read

    def _is_call_frame(self) -> bool:
        d = len(self.stack)  # the new object will be at depth d + 1
        if self.mode == "object":
            return d == 0
        if self.mode == "array":
            return d == 1 and self.stack[0]["t"] == "["
        # generic: the top object, or an item of its "tool_calls" array
        if d == 0:
            return True
        return d == 2 and self.stack[1]["t"] == "[" and self.stack[0].get("last_key") == "tool_calls"

    def feed(self, text: str) -> list[tuple[str, Any]]:
        self.out = []
        for ch in text:
            if self.complete:
                break
            self.raw += ch
            self._char(ch)
        return self.out

    def _emit_args(self, call: dict, text: str) -> None:
        if call["started"]:
            self.out.append(("args", text))
        else:
            call["pending"] += text

    def _char(self, ch: str) -> None:
        cap = self.capture
        if cap is not None:  # inside a call's arguments value: pass it through as it is
            call = cap["call"]
            if self.in_str:
                self._emit_args(call, ch)
                if self.esc:
                    self.esc = False
                elif ch == "\\":
                    self.esc = True
                elif ch == '"':
                    self.in_str = False
                    if cap["depth"] == len(self.stack) and not cap["container"]:
                        self.capture = None  # a string value ended
                return
            if ch == '"':
                self.in_str = True
                self._emit_args(call, ch)
                return
            if ch in "{[":
                self.stack.append({"t": ch, "key": None})
                self._emit_args(call, ch)
                return
            if ch in "}]":
                if len(self.stack) > cap["depth"]:
                    self.stack.pop()
                    self._emit_args(call, ch)
                    if len(self.stack) == cap["depth"]:
                        self.capture = None
                    return
                self.capture = None  # a primitive value ended at its object's close
                return self._char(ch)
            if ch == "," and len(self.stack) == cap["depth"]:
                self.capture = None
                return self._char(ch)
            if ch.isspace() and len(self.stack) == cap["depth"] and not call["args_seen"]:
                return
            call["args_seen"] = True
            self._emit_args(call, ch)
            return
        if self.in_str:
            if self.esc:
                self.esc = False
                self.str_buf += ch
            elif ch == "\\":
                self.esc = True
                self.str_buf += ch
            elif ch == '"':
                self.in_str = False
                try:
                    value = json.loads('"' + self.str_buf + '"')
                except json.JSONDecodeError:
                    value = self.str_buf
                self._string_done(value)
            else:
                self.str_buf += ch
            return
        if ch.isspace():
            return
        top = self.stack[-1] if self.stack else None
        if ch == '"':
            self.in_str, self.str_buf = True, ""
            return
        if ch == ":":
            if top is not None:
                top["colon"] = True
                if top.get("call") is not None and top["key"] in ("arguments", "parameters"):
                    call = top["call"]
                    call["args_seen"] = False
                    self.capture = {"call": call, "depth": len(self.stack), "container": False}
                    if call["name"] is not None and not call["started"]:
                        self._start(call)
            return
        if ch == ",":
            if top is not None:
                top["key"], top["colon"] = None, False
            return
        if ch in "{[":
            call = None
            if ch == "{" and self._is_call_frame():
                call = {"name": None, "started": False, "pending": "", "args_seen": False, "ended": False}
            if top is not None and top["t"] == "{":
                top["last_key"] = top["key"]
            self.stack.append({"t": ch, "key": None, "call": call, "colon": False})
            return
        if ch in "}]":
            frame = self.stack.pop() if self.stack else None
            if frame is not None and frame.get("call") is not None:
                call = frame["call"]
                if call["name"] is not None:
                    if not call["started"]:
                        if not call["args_seen"] and not call["pending"]:
                            call["pending"] = "{}"
                        self._start(call)
                    self.calls.append(call)
                    self.out.append(("end", None))
            if not self.stack:
                self.complete = True
            return
        # a primitive outside arguments (true, 1, null): nothing to note

    def _string_done(self, value: str) -> None:
        top = self.stack[-1] if self.stack else None
        if top is None or top["t"] != "{":
            return
        if not top.get("colon"):
            top["key"] = value
            top["last_key"] = value
            return
        call = top.get("call")
        if call is not None and top["key"] == "name" and call["name"] is None:
            call["name"] = value
            if call["args_seen"] or call["pending"]:
                self._start(call)

    def _start(self, call: dict) -> None:
        call["started"] = True
        self.out.append(("start", call["name"]))
        if call["pending"]:
            self.out.append(("args", call["pending"]))
            call["pending"] = ""


class ReplyParser:
    """Splits a reply, fed piece by piece, into ChatDeltas: content, reasoning (<think> blocks) and tool
    calls (the family's format), holding back only text that may still become a marker. Tool-call markup
    never reaches content. `tools`: whether calls are parsed at all (False: every call-like text is content)."""

    def __init__(self, family: str = "generic", tools: bool = True, think_open: bool = False):
        self.family = family
        self.tools = tools
        self.mode = "reasoning" if think_open else "content"
        gemma = family == "gemma4"
        self.t_open, self.t_close = (G_THINK_OPEN, G_THINK_CLOSE) if gemma else (THINK_OPEN, THINK_CLOSE)
        self._channel = False  # Gemma 4: the channel's name ("thought") still to skip after <|channel>
        self.buf = ""
        self.content = ""
        self.reasoning = ""
        self.tool_calls: list[ToolCall] = []
        self._scanner: _CallScanner | None = None
        self._call: dict | None = None  # {"id", "name", "args"} of the call being read
        self._tentative = ""  # generic/llama3: JSON text that may yet be content
        self._any_content = False  # non-blank content seen (a <think> block opens only before it)
        self._after_call = False
        self._strip_next = False

    # markers that may appear in the current mode
    def _markers(self) -> list[str]:
        if self.mode == "reasoning":
            return [self.t_close]
        m = [] if self._any_content else [self.t_open]
        if self.tools:
            if self.family == "hermes":
                m.append("<tool_call>")
            elif self.family == "gemma4":
                m.append(G_CALL)
            elif self.family == "mistral":
                m.append("[TOOL_CALLS]")
            elif self.family == "llama3":
                m.append("<|python_tag|>")
        return m

    def feed(self, text: str) -> list[ChatDelta]:
        out: list[ChatDelta] = []
        self.buf += text
        self._run(out, final=False)
        return _merge(out)

    def finish(self) -> list[ChatDelta]:
        out: list[ChatDelta] = []
        self._run(out, final=True)
        if self.mode == "gemma_call":  # <|tool_call> and nothing after it
            self._gemma_call(out, final=True)
        if self._scanner is not None:  # a call cut short (max_tokens): what was read of it stays unfinished
            self._end_call(out, complete=False)
        if self._tentative:
            self._content(out, self._tentative)
            self._tentative = ""
        return _merge(out)

    def _content(self, out, text: str) -> None:
        if not text:
            return
        if self._strip_next or (self._after_call and not text.strip()):
            text = text.lstrip()  # no blank lines between a block or a call and what follows
            if not text:
                return
            self._strip_next = False
        if text.strip():
            self._any_content = True
        self.content += text
        out.append(ChatDelta(content=text))

    def _run(self, out: list[ChatDelta], final: bool) -> None:
        while self.buf:
            if self._scanner is not None:
                self._scan(out)
                continue
            if self._channel:  # "thought\n" after Gemma 4's <|channel>: the channel's name, not reasoning
                nl = self.buf.find("\n")
                if nl < 0 and len(self.buf) < 24 and not final:
                    return
                if 0 <= nl < 24 and self.buf[:nl].strip().isidentifier():
                    self.buf = self.buf[nl + 1:]
                self._channel = False
                continue
            if self.mode == "gemma_call":  # <|tool_call>call:NAME{...}<tool_call|>
                if not self._gemma_call(out, final):
                    return
                continue
            if self.mode == "after_call":  # the family's closing tag, then content again
                close = "</tool_call>"
                stripped = self.buf.lstrip()
                if stripped.startswith(close):
                    self.buf = stripped[len(close):]
                    self.mode = "content"
                    continue
                if close.startswith(stripped) and not final:
                    return
                self.mode = "content"
                continue
            if (self.mode == "content" and self.tools and self.family in ("generic", "llama3")
                    and not self._any_content and not self.content.strip()):  # fmt: skip
                s = self.buf.lstrip()
                if s.startswith("{"):  # maybe a call: read it as one, content if it is not
                    self._tentative = self.buf
                    self.buf = ""
                    self._scanner = _CallScanner("generic" if self.family == "generic" else "object")
                    self._feed_scanner(out, self._tentative)
                    continue
                if not s and not final:
                    return
            markers = self._markers()
            hit, at = None, -1
            for m in markers:
                i = self.buf.find(m)
                if i >= 0 and (at < 0 or i < at):
                    hit, at = m, i
            if hit is None:
                hold = 0 if final else _partial_suffix(self.buf, markers)
                text, self.buf = self.buf[: len(self.buf) - hold], self.buf[len(self.buf) - hold :]
                self._text(out, text)
                return
            before, self.buf = self.buf[:at], self.buf[at + len(hit):]
            self._text(out, before)
            if hit == self.t_open:
                self.mode = "reasoning"
                self.buf = self.buf.lstrip("\n") if self.buf else self.buf
                self._channel = self.family == "gemma4"
            elif hit == self.t_close:
                self.mode = "content"
                self._strip_next = True
            elif hit == G_CALL:
                self.mode, self._call = "gemma_call", None
            else:
                self._scanner = _CallScanner("array" if hit == "[TOOL_CALLS]" else "object")
                self._tentative = ""

    def _gemma_call(self, out, final: bool) -> bool:
        """Reads one Gemma 4 call from buf: its start (the name) as soon as `call:NAME{` is there, its
        arguments (converted to JSON) when <tool_call|> closes it. False: wait for more text."""
        if self._call is None:
            brace = self.buf.find("{")
            if brace < 0 and not final:
                return False
            head = self.buf[: brace if brace >= 0 else len(self.buf)].strip()
            name = head[len("call:"):] if head.startswith("call:") else head
            self._call = {"id": new_call_id(), "name": name, "args": ""}
            out.append(ChatDelta(tool_call=ToolCallDelta(len(self.tool_calls), self._call["id"], name, "")))
            self.buf = self.buf[brace if brace >= 0 else len(self.buf):]
        end = self.buf.find(G_CALL_END)
        if end < 0 and not final:
            return False
        raw, self.buf = (self.buf[:end], self.buf[end + len(G_CALL_END):]) if end >= 0 else (self.buf, "")
        try:
            args = gemma_calls.to_json(raw) if raw.strip() else "{}"
        except ValueError:
            args = raw  # not Gemma's syntax: passed on as written (a call cut short, or a model's slip)
        c, self._call = self._call, None
        c["args"] = args
        out.append(ChatDelta(tool_call=ToolCallDelta(len(self.tool_calls), arguments=args)))
        self.tool_calls.append(ToolCall(c["id"], c["name"], args))
        self.mode, self._after_call, self._strip_next = "content", True, True
        return True

    def _text(self, out, text: str) -> None:
        if self.mode == "reasoning":
            if text:
                if not self.reasoning:
                    text = text.lstrip("\n")
                if text:
                    self.reasoning += text
                    out.append(ChatDelta(reasoning=text))
        else:
            self._content(out, text)

    def _scan(self, out) -> None:
        text, self.buf = self.buf, ""
        if self._tentative:
            self._tentative += text
        self._feed_scanner(out, text)

    def _feed_scanner(self, out, text: str) -> None:
        sc = self._scanner
        before = len(sc.raw)
        events = sc.feed(text)
        used = len(sc.raw) - before
        for kind, value in events:
            if kind == "start":
                cid = new_call_id()
                self._call = {"id": cid, "name": value, "args": ""}
                out.append(ChatDelta(tool_call=ToolCallDelta(len(self.tool_calls), cid, value, "")))
                self._tentative_commit()
            elif kind == "args":
                self._call["args"] += value
                out.append(ChatDelta(tool_call=ToolCallDelta(len(self.tool_calls), arguments=value)))
            elif kind == "end":
                c = self._call
                self.tool_calls.append(ToolCall(c["id"], c["name"], c["args"]))
                self._call = None
        if sc.complete:
            rest = text[used:]
            self._scanner = None
            if self._tentative:  # the JSON closed and held no call: it was content after all
                t, self._tentative = self._tentative, ""
                self._content(out, t[: len(t) - len(rest)])
            self._after_call = bool(sc.calls)
            self._strip_next = self._after_call
            if sc.mode != "generic" and self.family == "hermes":
                self.mode = "after_call"
            self.buf = rest + self.buf

    def _tentative_commit(self) -> None:
        self._tentative = ""  # a call began: the JSON is a call, never content

    def _end_call(self, out, complete: bool) -> None:
        if self._call is not None:
            c = self._call
            self.tool_calls.append(ToolCall(c["id"], c["name"], c["args"]))
            self._call = None
        self._scanner = None

    def result(self, finish_reason: str, logprobs=None) -> ChatResult:
        reason = "tool_calls" if self.tool_calls and finish_reason == "stop" else finish_reason
        return ChatResult(self.content.strip() if self.tool_calls else self.content, list(self.tool_calls),
                          self.reasoning.strip(), logprobs, reason)  # fmt: skip


class HarmonyParser(ReplyParser):
    """ReplyParser for gpt-oss's harmony format: each message's header (`[<|start|>assistant][ to=R]
    <|channel|>C[ json]<|message|>`) says where its text goes: the analysis channel is reasoning, a message
    to `functions.NAME` is a call of NAME (its text the arguments), anything else (final, a commentary
    preamble, text with no header at all) is content. Markers never reach content."""

    _BODY_END = (H_END, H_CALL, H_RETURN, H_START, H_CHANNEL)  # the last two begin the next header
    _HEADER_HEADS = (H_START, H_CHANNEL, " to=", "to=", "assistant")

    def __init__(self, tools: bool = True):
        super().__init__("harmony", tools=tools)
        self.mode = "header"  # or "body"
        self._kind = "content"  # where the body goes: "content", "reasoning" or "call"

    def _run(self, out: list[ChatDelta], final: bool) -> None:
        while self.buf:
            if self.mode == "header":
                at = self.buf.find(H_MESSAGE)
                if at < 0:
                    head = self.buf.lstrip()
                    if head and not any(h.startswith(head[: len(h)]) for h in self._HEADER_HEADS):
                        self._open("content")  # text without a header: content, up to the next marker
                        continue
                    if final:  # a header cut short (max_tokens): none of it is content
                        self.buf = ""
                    return
                header, self.buf = self.buf[:at], self.buf[at + len(H_MESSAGE):]
                self._begin(out, header)
                continue
            ends = [(i, m) for i, m in ((self.buf.find(m), m) for m in self._BODY_END) if i >= 0]
            if not ends:
                hold = 0 if final else _partial_suffix(self.buf, list(self._BODY_END))
                text, self.buf = self.buf[: len(self.buf) - hold], self.buf[len(self.buf) - hold :]
                self._body(out, text)
                return
            at, m = min(ends)
            self._body(out, self.buf[:at])
            self.buf = self.buf[at + (0 if m in (H_START, H_CHANNEL) else len(m)):]
            self._close()

    def _begin(self, out, header: str) -> None:
        recipient = re.search(r"to=([^\s<]+)", header)
        channel = re.search(re.escape(H_CHANNEL) + r"\s*(\w+)", header)
        name = recipient.group(1) if recipient else ""
        if self.tools and name.startswith("functions."):
            cid = new_call_id()
            self._call = {"id": cid, "name": name[len("functions."):], "args": ""}
            out.append(ChatDelta(tool_call=ToolCallDelta(len(self.tool_calls), cid, self._call["name"], "")))
            self._open("call")
        else:
            self._open("reasoning" if channel and channel.group(1) == "analysis" else "content")

    def _open(self, kind: str) -> None:
        self.mode, self._kind = "body", kind
        self._sep = kind == "reasoning" and bool(self.reasoning)  # two analysis messages: a line between

    def _body(self, out, text: str) -> None:
        if not text:
            return
        if self._kind == "call":
            self._call["args"] += text
            out.append(ChatDelta(tool_call=ToolCallDelta(len(self.tool_calls), arguments=text)))
        elif self._kind == "reasoning":
            if self._sep:
                text, self._sep = "\n" + text, False
            self.reasoning += text
            out.append(ChatDelta(reasoning=text))
        else:
            self._content(out, text)

    def _close(self) -> None:
        if self._kind == "call" and self._call is not None:
            c = self._call
            self.tool_calls.append(ToolCall(c["id"], c["name"], c["args"]))
            self._call = None
            self._after_call = True
        self.mode, self._kind = "header", "content"

    def finish(self) -> list[ChatDelta]:
        out: list[ChatDelta] = []
        self._run(out, final=True)
        if self.mode == "body":
            self._close()
        return _merge(out)


def _partial_suffix(text: str, markers: list[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a marker."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), 0, -1):
            if text.endswith(m[:k]):
                best = max(best, k)
                break
    return best


def _merge(deltas: list[ChatDelta]) -> list[ChatDelta]:
    out: list[ChatDelta] = []
    for d in deltas:
        p = out[-1] if out else None
        if p is not None and p.tool_call is None and d.tool_call is None and not (p.content and d.reasoning) \
                and not (p.reasoning and d.content):  # fmt: skip
            p.content += d.content
            p.reasoning += d.reasoning
            continue
        if (p is not None and p.tool_call is not None and d.tool_call is not None and d.tool_call.id is None
                and p.tool_call.index == d.tool_call.index):  # fmt: skip
            p.tool_call.arguments += d.tool_call.arguments
            continue
        out.append(d)
    return out


# ---------------------------------------------------------------------------------------------------
# one call's plan


@dataclass
class ChatPlan:
    """What a chat request needs beyond sampling: the prompt (text and ids), the grammar every token obeys
    (None: free), and how to read the reply."""

    prompt: str
    prompt_ids: list[int]
    grammar: Any
    family: str
    tools: list[dict]
    tool_choice: str
    think_open: bool

    def parser(self) -> ReplyParser:
        tools = bool(self.tools) and self.tool_choice != "none"
        if self.family == "harmony":
            return HarmonyParser(tools=tools)
        return ReplyParser(self.family, tools=tools, think_open=self.think_open)


def encode_prompt(template: ChatTemplate, tokenizer, text: str) -> list[int]:
    """Token ids of a rendered chat prompt: special tokens parsed, BOS added once (as LLM.tokenize_chat)."""
    return tokenizer.encode(text, add_special=not template.starts_with_bos(text), parse_special=True)


_RESERVED = ("messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "documents")


def check_template_kwargs(kwargs: Any, field_name: str = "chat_template_kwargs") -> dict:
    """{} for None; else an object of JSON values whose names are not the ones edgeinfer passes itself."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise ToolError(f"'{field_name}' must be an object of template variables (names as keys), got {kwargs!r}.",
                        field_name)  # fmt: skip
    taken = [k for k in kwargs if k in _RESERVED]
    if taken:
        raise ToolError(f"'{field_name}' cannot set {', '.join(taken)}: give them as the request's own fields.",
                        field_name)  # fmt: skip
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError):
        raise ToolError(f"'{field_name}' must hold JSON values only.", field_name) from None
    return dict(kwargs)


def plan_chat(template: ChatTemplate, tokenizer, messages: list[dict], tools: Any = None, tool_choice: Any = None,
              parallel_tool_calls: bool = True, grammar: Grammar | None = None,
              reasoning_budget: int | None = None, template_kwargs: dict | None = None) -> ChatPlan:  # fmt: skip
    """Render `messages` (and `tools`) with the model's template; the grammar for tool_choice (required or
    a named function), the response grammar, and the reasoning budget; the family's reply parser.
    template_kwargs: more variables for the template (e.g. {"enable_thinking": True}, as vLLM's and
    llama-server's chat_template_kwargs). ToolError / GrammarError name the field at fault."""
    template_kwargs = check_template_kwargs(template_kwargs)
    tools = parse_tools(tools)
    choice = parse_tool_choice(tool_choice, tools)
    if reasoning_budget is not None and (isinstance(reasoning_budget, bool) or not isinstance(reasoning_budget, int)):
        raise ToolError(f"'reasoning_budget' must be an integer (tokens; -1: no limit), got {reasoning_budget!r}.",
                        "reasoning_budget")  # fmt: skip
    if reasoning_budget is not None and reasoning_budget < 0:
        reasoning_budget = None
    token_texts = set(tokenizer.vocab.token_to_id) if tokenizer is not None else set()
    family = detect_family(template, token_texts)
    shown = tools if choice != "none" else []
    text = render_messages(template, messages, shown, family, template_kwargs=template_kwargs)
    t_open, t_close = (G_THINK_OPEN, G_THINK_CLOSE) if family == "gemma4" else (THINK_OPEN, THINK_CLOSE)
    think_open = text.rstrip().endswith(t_open)
    g = tools_grammar(family, shown, choice, parallel_tool_calls, tokenizer, grammar)
    if family == "harmony":  # a grammar leaves no analysis message; without one, the budget bounds it
        if g is None and reasoning_budget is not None:
            g = ReasoningGrammar(None, reasoning_budget, False, H_ANALYSIS, H_END, H_FINAL)
    elif text.rstrip().endswith(t_close):  # the prompt opened and closed the block: thinking is off
        pass
    elif reasoning_budget is not None or think_open or (g is not None and template_caps(template)["think"]):
        if g is not None or reasoning_budget is not None:
            g = ReasoningGrammar(g, reasoning_budget, think_open, t_open, t_close)
    ids = encode_prompt(template, tokenizer, text) if tokenizer is not None else []
    return ChatPlan(text, ids, g, family, shown, choice, think_open)


__all__ = [
    "ChatDelta", "ChatPlan", "ChatResult", "HarmonyParser", "ReasoningGrammar", "ReplyParser", "ToolCall", "ToolCallDelta",
    "ToolError", "check_template_kwargs", "detect_family", "parse_tool_choice", "parse_tools", "plan_chat", "render_messages",
    "tool_call_lark", "tools_grammar",
]  # fmt: skip
