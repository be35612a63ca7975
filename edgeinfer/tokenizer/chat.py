"""Chat templates: the file's own Jinja template, rendered in a sandbox, or a built-in one.

A GGUF file may carry `tokenizer.chat_template`, the Jinja text Hugging Face's `apply_chat_template`
renders. It is code from the file's author, so it runs in Jinja's immutable sandbox (no attribute
starting with `_`, no mutation of the messages) with the globals and filters transformers provides:
`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII text and honours `indent`, the
`{% generation %}` tag, and `break`/`continue`. Files that ship no template get a built-in one, picked
from the vocabulary's special tokens first and the architecture second, as llama.cpp does.

Some templates (Gemma, Llama 2 and 3, Mistral) start with the BOS text, as the official ones do. A
tokenizer that adds BOS would then add a second one: when `ChatTemplate.starts_with_bos(text)`,
tokenize with `add_special=False`, or (when the vocabulary adds BOS) `strip_bos(text)` as llama.cpp does.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from ..errors import EdgeInferError

KEY_CHAT_TEMPLATE = "tokenizer.chat_template"


class ChatTemplateError(EdgeInferError, ValueError):
    """A chat template that does not parse, refuses the messages, or messages of the wrong shape."""


# ---------------------------------------------------------------------------------------------------
# Built-in templates, for files that ship none. Each one states the reference it reproduces; the tests
# compare them with llama.cpp's `llama_chat_apply_template` output of the same name.

_CHATML = r"""
{%- for message in messages -%}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""

# Gemma 3's official template (text only): BOS first, the system prompt folded into the first user
# turn, "assistant" called "model", contents trimmed, roles strictly alternating.
_GEMMA = r"""
{{- bos_token -}}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{- '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') -}}
    {{- message['content'] | trim -}}
    {{- '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\n' -}}
{%- endif -%}
"""

# Gemma 4's official template (text only, no tools): BOS first, a system turn of its own, "assistant"
# called "model", contents trimmed; thinking off, as the official template defaults: the generation
# prompt opens and closes an empty thought channel.
_GEMMA4 = r"""
{{- bos_token -}}
{%- for message in messages -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{- '<|turn>' + role + '\n' + (message['content'] | trim) + '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\n<|channel>thought\n<channel|>' -}}
{%- endif -%}
"""

# Llama 3's official template: BOS first, a header per message, contents trimmed.
_LLAMA3 = r"""
{{- bos_token -}}
{%- for message in messages -%}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' -}}
    {{- message['content'] | trim -}}
    {{- '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- endif -%}
"""

# Llama 2 chat's official template: BOS before every [INST], the system prompt in <<SYS>> inside the
# first user turn, replies followed by " " and EOS. The generation prompt is the closing [/INST].
_LLAMA2 = r"""
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set system_message = messages[0]['content'] -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_message = none -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
    {%- endif -%}
    {%- set content = message['content'] -%}
    {%- if loop.first and system_message is not none -%}
        {%- set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + content -%}
    {%- endif -%}
    {%- if message['role'] == 'user' -%}
        {{- bos_token + '[INST] ' + (content | trim) + ' [/INST]' -}}
    {%- else -%}
        {{- ' ' + (content | trim) + ' ' + eos_token -}}
    {%- endif -%}
{%- endfor -%}
"""

# Mistral v0.3's official template (no tools): BOS first, the system prompt before the last user
# message, replies trimmed and followed by EOS. The generation prompt is the closing [/INST].
_MISTRAL = r"""
{{- bos_token -}}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set system_message = messages[0]['content'] -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_message = none -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for message in loop_messages -%}
    {%- if message['role'] == 'user' -%}
        {%- set ns.last_user = loop.index0 -%}
    {%- endif -%}
{%- endfor -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
    {%- endif -%}
    {%- if message['role'] == 'user' -%}
        {%- if system_message is not none and loop.index0 == ns.last_user -%}
            {{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' -}}
        {%- else -%}
            {{- '[INST] ' + message['content'] + '[/INST]' -}}
        {%- endif -%}
    {%- else -%}
        {{- ' ' + (message['content'] | trim) + eos_token -}}
    {%- endif -%}
{%- endfor -%}
"""

# Phi-3, as llama.cpp's built-in renders it.
_PHI3 = r"""
{%- for message in messages -%}
    {{- '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|assistant|>\n' -}}
{%- endif -%}
"""

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": _CHATML.strip(),
    "gemma": _GEMMA.strip(),
    "gemma4": _GEMMA4.strip(),
    "llama3": _LLAMA3.strip(),
    "llama2": _LLAMA2.strip(),
    "mistral": _MISTRAL.strip(),
    "phi3": _PHI3.strip(),
}

# Special-token texts that identify a chat format, checked in this order (a vocabulary may hold more
# than one; the first found wins).
VOCAB_MARKERS: tuple[tuple[str, str], ...] = (
    ("<|turn>", "gemma4"),
    ("<start_of_turn>", "gemma"),
    ("<|start_header_id|>", "llama3"),
    ("<|im_start|>", "chatml"),
    ("[INST]", "mistral"),
    ("<|assistant|>", "phi3"),
)

# general.architecture -> built-in, when the vocabulary names none.
ARCH_TEMPLATES: dict[str, str] = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "gemma4": "gemma4",
    "phi3": "phi3",
    "qwen2": "chatml",
    "qwen2moe": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
}

DEFAULT_TEMPLATE = "chatml"  # llama.cpp's choice when nothing else is known


def builtin_template(name: str) -> str:
    """The Jinja text of the built-in template `name` (one of `BUILTIN_TEMPLATES`)."""
    try:
        return BUILTIN_TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_TEMPLATES))
        raise ChatTemplateError(
            f"no built-in chat template named {name!r}; choose one of: {known}.") from None


# ---------------------------------------------------------------------------------------------------
# The sandboxed environment, configured as transformers configures its own.


def _raise_exception(message: Any) -> None:
    raise ChatTemplateError(f"the chat template refused the messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks: render the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


# ---------------------------------------------------------------------------------------------------
# The render budget. A template is code from the file's author: the sandbox stops attribute access,
# the budget stops work. Generous for real templates (they render in milliseconds, loop over the
# messages, and print what they are given), fatal to a template that loops a billion times, prints
# gigabytes, or asks for an 8 GB string in one operation.

RENDER_SECONDS = 5.0  # wall time of one render (EDGEINFER_TEMPLATE_SECONDS overrides)
RENDER_LOOP_ITEMS = 1_000_000  # items of all range() loops of one render together
RENDER_OUTPUT_CHARS = 16 << 20  # output characters beyond 4x the messages' own text
RENDER_MEMORY_BYTES = 1 << 30  # growth of the process's resident memory during one render
MAX_VALUE_LEN = 16 << 20  # the largest string, list or number of digits one operation may make
MAX_CALL_INT = 10_000_000  # the largest integer argument of a method or filter (widths, counts)


class TemplateBudgetError(ChatTemplateError):
    """A chat template ran past its render budget (time, loop items, output, memory, one huge value)."""


class _Budget:
    """The budget of the render running in this thread (thread-local: renders in several threads of a
    server each have their own)."""

    _local = threading.local()

    def __init__(self, name: str):
        self.name = name
        self.loop_items = 0

    @classmethod
    def current(cls) -> "_Budget | None":
        return getattr(cls._local, "budget", None)

    def refuse(self, what: str) -> TemplateBudgetError:
        return TemplateBudgetError(
            f"the {self.name} chat template was stopped: {what}. Real chat templates need a tiny fraction "
            "of this; the template is broken or hostile (use a built-in template, e.g. --chat-template chatml, "
            "or another model file)."
        )


def _env_seconds() -> float:
    try:
        v = float(os.environ.get("EDGEINFER_TEMPLATE_SECONDS", RENDER_SECONDS))
    except ValueError:
        return RENDER_SECONDS
    return v if math.isfinite(v) and v > 0 else RENDER_SECONDS


def _size_of(value: Any) -> int:
    if isinstance(value, (str, bytes, list, tuple)):
        return len(value)
    return 0


def _check_value(value: Any) -> Any:
    if _size_of(value) > MAX_VALUE_LEN:
        b = _Budget.current()
        raise (b.refuse if b else TemplateBudgetError)(f"a value of {_size_of(value)} items, more than {MAX_VALUE_LEN}")
    return value


def _check_args(args: tuple, kwargs: dict) -> None:
    for a in (*args, *kwargs.values()):
        what = None
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_CALL_INT:
            what = f"an integer argument of {a}, larger than {MAX_CALL_INT}"
        elif isinstance(a, (list, tuple)) and len(a) <= MAX_VALUE_LEN:  # join() and the like: the parts' size
            n = sum(len(x) for x in a if isinstance(x, str))
            if n > MAX_VALUE_LEN:
                what = f"a list of strings of {n:,} characters in all, more than {MAX_VALUE_LEN:,}"
        if what is not None:
            b = _Budget.current()
            raise b.refuse(what) if b else TemplateBudgetError(what)


def _concat(items: tuple) -> str:
    """Jinja's `~` (str_join), its size checked before it is made."""
    parts = [x if isinstance(x, str) else str(x) for x in items]
    n = sum(map(len, parts))
    if n > MAX_VALUE_LEN:
        b = _Budget.current()
        what = f"'~' would make a string of {n:,} characters, more than {MAX_VALUE_LEN:,}"
        raise b.refuse(what) if b else TemplateBudgetError(what)
    return "".join(parts)


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator with `~` routed through _concat (the sandbox intercepts binary operators,
    but `~` compiles to a plain join)."""

    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        self.write("environment.concat_checked((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _budget_range(*args: Any) -> Any:
    rng = safe_range(*args)
    b = _Budget.current()
    if b is None:
        return rng
    b.loop_items += len(rng)
    if b.loop_items > RENDER_LOOP_ITEMS:
        raise b.refuse(f"its loops asked for more than {RENDER_LOOP_ITEMS:,} range() items")
    return rng


def _binop_size(op: str, left: Any, right: Any) -> int:
    """The size of what `left op right` would make, computed without making it."""
    if op == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int):
                return len(seq) * max(n, 0)
        if isinstance(left, int) and isinstance(right, int):
            return (abs(left).bit_length() + abs(right).bit_length()) // 3
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0:
            return int(abs(left).bit_length() * right // 3)
    elif op == "+":
        return _size_of(left) + _size_of(right)
    elif op == "%" and isinstance(left, str):
        widths = [int(w) for spec in _PERCENT_SPEC.findall(left) for w in spec if w.isdigit()]
        stars = [a for a in (right if isinstance(right, tuple) else (right,)) if isinstance(a, int)]
        return len(left) + sum(widths) + sum(abs(a) for a in stars if "*" in left)
    return 0


_PERCENT_SPEC = re.compile(r"%[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_SPEC_NUMBER = re.compile(r"\{[^{}]*?:[^{}]*?(\d+)")


def _format_width(obj: Any) -> int:
    """The widths a str.format / format_map template asks for (each field's largest number)."""
    obj = getattr(obj, "__wrapped__", obj)  # jinja's sandbox wraps str.format (wrap_str_format)
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, str) and getattr(obj, "__name__", "") in ("format", "format_map"):
        return sum(int(n) for n in _FORMAT_SPEC_NUMBER.findall(owner))
    return 0


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**", "+", "%"])
    code_generator_class = _CodeGenerator
    concat_checked = staticmethod(_concat)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # The stock sandbox returns an Undefined that fails only when used; fail at once instead.
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        n = _binop_size(operator, left, right)
        if n > MAX_VALUE_LEN:
            b = _Budget.current()
            what = f"'{operator}' would make a value of about {n:,} items, more than {MAX_VALUE_LEN:,}"
            raise b.refuse(what) if b else TemplateBudgetError(what)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's signature)
        _check_args(args, kwargs)
        if _format_width(__obj) > MAX_VALUE_LEN:
            b = _Budget.current()
            what = "a format string asks for a field wider than the budget"
            raise b.refuse(what) if b else TemplateBudgetError(what)
        return _check_value(super().call(__context, __obj, *args, **kwargs))


def _guard_filter(fn):
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        _check_args(args, kwargs)
        return _check_value(fn(*args, **kwargs))

    return guarded


def _make_env() -> _Sandbox:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.filters = {name: _guard_filter(f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["range"] = _budget_range
    return env


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Watchdog:
    """Raises _Stop in the rendering thread (an asynchronous exception, delivered between two Python
    bytecodes of Jinja's compiled template) when the render runs past its time or memory budget."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.tid = threading.get_ident()
        self.lock = threading.Lock()
        self.done = False
        self.fired: str | None = None
        self.rss0 = _rss_bytes()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="edgeinfer-template-watchdog", daemon=True)

    def _watch(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.stop.wait(0.02):
            why = None
            if time.monotonic() > deadline:
                why = f"it ran for more than {self.seconds:g} s"
            elif self.rss0 and _rss_bytes() - self.rss0 > RENDER_MEMORY_BYTES:
                why = f"it grew the process by more than {RENDER_MEMORY_BYTES >> 20} MiB"
            if why is not None:
                with self.lock:
                    if not self.done:
                        self.fired = why
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.tid), ctypes.py_object(_Stop))
                return

    def __enter__(self) -> "_Watchdog":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.done = True
            if self.fired is not None:  # not yet delivered: take it back
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.tid), None)
        self.stop.set()


class _Stop(BaseException):
    """Raised by the watchdog inside a render that ran past its budget (BaseException: no template
    catches it)."""


_ENV = _make_env()


# ---------------------------------------------------------------------------------------------------


def validate_messages(messages: Any) -> None:
    """Raise ChatTemplateError unless `messages` is a list of {'role': str, 'content': str} dicts.

    An assistant message that carries `tool_calls` may have no content (or None), as in OpenAI's API.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, "
            f"not a {type(messages).__name__}.")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(
                f"message {i} is a {type(message).__name__}, not a dict with 'role' and 'content'.")
        if "role" not in message:
            raise ChatTemplateError(f"message {i} has no 'role' (give 'system', 'user' or 'assistant').")
        if not isinstance(message["role"], str):
            raise ChatTemplateError(
                f"message {i} has a 'role' of type {type(message['role']).__name__}; it must be a string.")
        content = message.get("content")
        if content is None and message.get("tool_calls"):
            continue
        if "content" not in message:
            raise ChatTemplateError(f"message {i} has no 'content'.")
        if not isinstance(content, str):
            raise ChatTemplateError(
                f"message {i} has a 'content' of type {type(content).__name__}; it must be a string.")


class ChatTemplate:
    """A compiled chat template: `render(messages)` gives the prompt text the model expects.

    `name` is "file" for the file's own template, else the built-in's name; `source` is the Jinja text.
    """

    def __init__(self, source: str, name: str = "custom", bos_token: str = "", eos_token: str = ""):
        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _ENV.from_string(source)
        except TemplateSyntaxError as e:
            raise ChatTemplateError(
                f"the {name} chat template is not valid Jinja: {e.message} (line {e.lineno}).") from e

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], token_texts: set[str] | None = None,
                      bos_token: str = "", eos_token: str = "") -> ChatTemplate:
        """The file's own template, or the built-in its vocabulary and architecture call for.

        `token_texts` defaults to the texts of `tokenizer.ggml.tokens`; an empty `bos_token`/`eos_token`
        is looked up from the file's BOS/EOS token ids.
        """
        tokens = metadata.get("tokenizer.ggml.tokens")
        bos_token = bos_token or _token_text(tokens, metadata.get("tokenizer.ggml.bos_token_id"))
        eos_token = eos_token or _token_text(tokens, metadata.get("tokenizer.ggml.eos_token_id"))
        source = metadata.get(KEY_CHAT_TEMPLATE)
        if isinstance(source, str) and source.strip():
            return cls(source, "file", bos_token, eos_token)
        if token_texts is None:
            token_texts = {t for t in tokens if isinstance(t, str)} if isinstance(tokens, (list, tuple)) else set()
        name = select_builtin(metadata, token_texts)
        return cls(builtin_template(name), name, bos_token, eos_token)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text for `messages`; `tools`, `documents` and any other keyword reach the template."""
        validate_messages(messages)
        context = {"tools": None, "documents": None, **kwargs}
        context.update(messages=messages, add_generation_prompt=add_generation_prompt,
                       bos_token=self.bos_token, eos_token=self.eos_token)
        limit = RENDER_OUTPUT_CHARS + 4 * sum(len(m.get("content") or "") for m in messages if isinstance(m, Mapping))
        budget = _Budget(self.name)
        _Budget._local.budget = budget
        watchdog = _Watchdog(_env_seconds())
        try:
            with watchdog:
                pieces, n = [], 0
                for piece in self._template.generate(**context):
                    n += len(piece)
                    if n > limit:
                        raise budget.refuse(f"its output passed {limit:,} characters")
                    pieces.append(piece)
                return "".join(pieces)
        except _Stop:
            raise budget.refuse(watchdog.fired or "it ran past its budget") from None
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise ChatTemplateError(
                f"the {self.name} chat template did something the sandbox forbids: {e}") from e
        except MemoryError:
            raise budget.refuse("it ran out of memory") from None
        except (TemplateError, TypeError, ValueError, LookupError, AttributeError, ArithmeticError,
                RuntimeError) as e:
            raise ChatTemplateError(
                f"the {self.name} chat template failed on these messages: {type(e).__name__}: {e}") from e
        finally:
            _Budget._local.budget = None

    def starts_with_bos(self, text: str) -> bool:
        """True when rendered `text` already begins with the BOS text: tokenize it with add_special=False."""
        return bool(self.bos_token) and text.startswith(self.bos_token)

    def strip_bos(self, text: str) -> str:
        """`text` without its leading BOS text, for a tokenizer that adds BOS itself (llama.cpp's rule).

        Only for vocabularies that add BOS: SmolLM2's BOS is `<|im_start|>`, which its template needs.
        """
        return text[len(self.bos_token):] if self.starts_with_bos(text) else text

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, {len(self.source)} chars)"


def select_builtin(metadata: Mapping[str, Any], token_texts: set[str]) -> str:
    """The built-in template for a file without one: by special tokens, then architecture, then ChatML."""
    for marker, name in VOCAB_MARKERS:
        if marker in token_texts:
            return name
    arch = metadata.get("general.architecture")
    if isinstance(arch, str) and arch in ARCH_TEMPLATES:
        return ARCH_TEMPLATES[arch]
    if arch == "llama" and metadata.get("tokenizer.ggml.model") == "llama":
        return "llama2"  # a sentencepiece Llama with no chat tokens: Llama 2's [INST] format
    return DEFAULT_TEMPLATE


def _token_text(tokens: Sequence[str] | None, token_id: Any) -> str:
    if (not isinstance(tokens, (list, tuple)) or isinstance(token_id, bool) or not isinstance(token_id, int)
            or not 0 <= token_id < len(tokens) or not isinstance(tokens[token_id], str)):  # fmt: skip
        return ""
    return tokens[token_id]
