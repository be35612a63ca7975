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

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

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
    "llama3": _LLAMA3.strip(),
    "llama2": _LLAMA2.strip(),
    "mistral": _MISTRAL.strip(),
    "phi3": _PHI3.strip(),
}

# Special-token texts that identify a chat format, checked in this order (a vocabulary may hold more
# than one; the first found wins).
VOCAB_MARKERS: tuple[tuple[str, str], ...] = (
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


class _Sandbox(ImmutableSandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # The stock sandbox returns an Undefined that fails only when used; fail at once instead.
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")


def _make_env() -> _Sandbox:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


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
            token_texts = set(tokens) if tokens is not None else set()
        name = select_builtin(metadata, token_texts)
        return cls(builtin_template(name), name, bos_token, eos_token)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text for `messages`; `tools`, `documents` and any other keyword reach the template."""
        validate_messages(messages)
        context = {"tools": None, "documents": None, **kwargs}
        context.update(messages=messages, add_generation_prompt=add_generation_prompt,
                       bos_token=self.bos_token, eos_token=self.eos_token)
        try:
            return self._template.render(**context)
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise ChatTemplateError(
                f"the {self.name} chat template did something the sandbox forbids: {e}") from e
        except (TemplateError, TypeError, ValueError, LookupError, AttributeError, ArithmeticError,
                RuntimeError) as e:
            raise ChatTemplateError(
                f"the {self.name} chat template failed on these messages: {type(e).__name__}: {e}") from e

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
    if arch in ARCH_TEMPLATES:
        return ARCH_TEMPLATES[arch]
    if arch == "llama" and metadata.get("tokenizer.ggml.model") == "llama":
        return "llama2"  # a sentencepiece Llama with no chat tokens: Llama 2's [INST] format
    return DEFAULT_TEMPLATE


def _token_text(tokens: Sequence[str] | None, token_id: Any) -> str:
    if tokens is None or token_id is None or not 0 <= int(token_id) < len(tokens):
        return ""
    return tokens[int(token_id)]
