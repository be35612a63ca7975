"""A conversation without a screen: its messages, system prompt and sampling settings, fitting it to the
context, and `/set NAME VALUE` as a person types it. `edgeinfer run`'s REPL (repl.py) and the chat app
(edgeinfer.tui) both hold one, so they parse settings alike and drop old turns alike.

    chat = Conversation(system="You are terse.")
    chat.set("temp", "0.2")                      # ("temperature", 0.2): parsed, checked, stored
    chat.messages.append({"role": "user", "content": "Hi"})
    dropped = chat.fit(llm)                      # the oldest messages that no longer fit, removed
    reply = llm.chat(chat.for_model(), **chat.params)

The settable names and their types come from `SamplingParams`' fields (engine/sampling.py), the one place
the sampling defaults live, plus `max_tokens`, the most tokens of one reply.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from .engine.sampling import SamplingError, SamplingParams
from .errors import EdgeInferError

REPLY_MAX_TOKENS = 512  # the default most tokens of one reply in a conversation (run, chat)
_FIT_MAX_TOKENS = 256  # what fit() leaves room for when the settings name no max_tokens (LLM.generate's)
# SamplingParams fields a person does not set by name: a token -> bias table, and a window length that
# LLM.generate takes no keyword for
_NOT_SETTABLE = ("logit_bias", "repeat_last_n")


def _settable() -> dict[str, type]:
    hints = typing.get_type_hints(SamplingParams)
    out: dict[str, type] = {}
    for f in dataclasses.fields(SamplingParams):
        if f.name in _NOT_SETTABLE:
            continue
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # `int | None`: the value's type; None is spelt "random"
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        out[f.name] = kind
    out["max_tokens"] = int
    return out


SETTABLE: dict[str, type] = _settable()  # name -> the type its value is read as
ALIASES = {"temp": "temperature", "num_predict": "max_tokens", "n": "max_tokens", "topk": "top_k", "topp": "top_p"}


class SettingError(EdgeInferError, ValueError):
    """A setting that cannot be applied; the message says why, in a sentence."""


def default_params(max_tokens: int = REPLY_MAX_TOKENS) -> dict:
    """Every settable name with its default: SamplingParams' own, and `max_tokens`."""
    defaults = SamplingParams()
    return {name: (max_tokens if name == "max_tokens" else getattr(defaults, name)) for name in SETTABLE}


def setting_name(name: str) -> str:
    """The canonical name of a setting ("temp" -> "temperature", "top-p" -> "top_p", ...)."""
    key = name.strip().lower().replace("-", "_")
    return ALIASES.get(key, ALIASES.get(key.replace("_", ""), key))


def parse_setting(name: str, text: str) -> tuple[str, object]:
    """(name, value) from text typed by a person: `/set temp 0.2`, a field of a settings panel.
    seed takes "random" (or "none", "-1", or nothing) for a fresh seed each reply."""
    name = setting_name(name)
    if name not in SETTABLE:
        raise SettingError(f"Cannot set {name!r}; settable: system, {', '.join(SETTABLE)}.")
    text = (text or "").strip()
    if name == "seed" and text.lower() in ("", "random", "none", "-1"):
        return name, None
    if not text:
        raise SettingError(f"{name} needs a value.")
    kind = SETTABLE[name]
    try:
        value = kind(text)
    except ValueError:
        raise SettingError(f"{name} needs {'an integer' if kind is int else 'a number'}, got {text!r}.") from None
    return name, value


def validate_params(params: dict) -> None:
    """Raise SettingError when the settings are out of range (the engine's own rules). Keys that are no
    sampling setting (speculative, draft_max, ...) pass through unchecked."""
    max_tokens = params.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0):
        raise SettingError(f"max_tokens must be a positive integer, got {max_tokens!r}.")
    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    try:
        SamplingParams(**{k: v for k, v in params.items() if k in fields}).validate()
    except (SamplingError, TypeError) as e:
        raise SettingError(str(e)) from None


class Conversation:
    """The messages of a chat (user and assistant turns, oldest first), its system prompt and the keyword
    arguments each reply is written with (`params`, as LLM.chat takes them)."""

    def __init__(self, params: dict | None = None, system: str | None = None):
        self.params: dict = dict(default_params() if params is None else params)
        self.system: str | None = system or None
        self.messages: list[dict] = []

    def for_model(self) -> list[dict]:
        """The messages the model reads: the system prompt first (when there is one), then the turns."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def clear(self) -> None:
        self.messages.clear()

    def set(self, name: str, text: str) -> tuple[str, object]:
        """Parse, check and store one sampling setting; returns (canonical name, value). A SettingError
        (nothing changed) says what is wrong. The system prompt is no setting: assign `system`."""
        key, value = parse_setting(name, text)
        validate_params({**self.params, key: value})
        self.params[key] = value
        return key, value

    def fit(self, llm) -> list[dict]:
        """Drop the oldest turns until the prompt and the reply's budget fit `llm`'s context (n_ctx,
        tokenize_chat). The system prompt and the newest message always stay. Returns the messages
        dropped, oldest first (empty when everything fits)."""
        n_ctx = llm.n_ctx
        budget = n_ctx - min(self.params.get("max_tokens") or _FIT_MAX_TOKENS, n_ctx // 2)
        dropped: list[dict] = []
        while len(self.messages) > 1 and len(llm.tokenize_chat(self.for_model())) > budget:
            n = 2 if len(self.messages) > 2 else 1  # a user message and its reply together
            dropped += self.messages[:n]
            del self.messages[:n]
        return dropped


def dropped_turns(dropped: list[dict]) -> int:
    """How many turns (a message and its reply) a list of dropped messages makes."""
    return (len(dropped) + 1) // 2
