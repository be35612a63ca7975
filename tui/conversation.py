"""What the chat app knows without a screen: settings parsing and checking, the conversation file format,
and the figures of the status bar. Kept apart from the widgets so it is easy to test and to reuse.

A saved conversation is one JSON object:

    {"format": "edgeinfer-chat", "version": 1, "model": "SmolLM2 135M Instruct",
     "system": "You are terse." | null, "settings": {"temperature": 0.8, ...},
     "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}

`load_conversation` also takes a bare list of {"role", "content"} messages (the OpenAI shape); a leading
system message becomes the system prompt.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.repl import ALIASES, SETTABLE

FORMAT = "edgeinfer-chat"
VERSION = 1
ROLES = ("user", "assistant")

# the settings the app shows and changes (the rest of `run`'s sampling flags pass through untouched)
PANEL_SETTINGS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens", "seed")


class SettingError(ValueError):
    """A setting that cannot be applied; the message says why, in a sentence."""


def setting_name(name: str) -> str:
    """The canonical name of a setting ("temp" -> "temperature", "top-p" -> "top_p", ...)."""
    key = name.strip().lower().replace("-", "_")
    return ALIASES.get(key, ALIASES.get(key.replace("_", ""), key))


def parse_setting(name: str, text: str):
    """(name, value) from text typed by a person: `/set temp 0.2`, a field of the settings panel.
    seed takes "random" (or "none", or nothing) for a fresh seed each reply."""
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
    """Raise SettingError when the sampling settings are out of range (the engine's own rules)."""
    from edgeinfer.engine.sampling import SamplingError, SamplingParams

    max_tokens = params.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens <= 0):
        raise SettingError(f"max_tokens must be a positive integer, got {max_tokens!r}.")
    trial = {k: v for k, v in params.items() if k != "max_tokens"}
    try:
        SamplingParams(**trial).validate()
    except (SamplingError, TypeError) as e:
        raise SettingError(str(e)) from None


def describe_params(params: dict) -> str:
    """"temp 0.8 · top-p 0.95 · max 512 · seed random" for the status bar."""
    seed = params.get("seed")
    parts = [
        f"temp {params.get('temperature', 0.8):g}",
        f"top-p {params.get('top_p', 0.95):g}",
        f"max {params.get('max_tokens', '-')}",
        f"seed {'random' if seed is None else seed}",
    ]
    return " · ".join(parts)


# -- files -------------------------------------------------------------------------------------------


def save_conversation(path: str | Path, messages: list[dict], system: str | None, params: dict,
                      model: str | None = None) -> Path:
    path = Path(path).expanduser()
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "system": system,
        "settings": params,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
    }
    try:
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as e:
        raise SettingError(f"Could not save to {path}: {e.strerror or e}.") from None
    return path


@dataclass
class LoadedConversation:
    messages: list[dict]
    system: str | None
    settings: dict
    model: str | None


def load_conversation(path: str | Path) -> LoadedConversation:
    path = Path(path).expanduser()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingError(f"No such file: {path}.") from None
    except OSError as e:
        raise SettingError(f"Could not read {path}: {e.strerror or e}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SettingError(f"{path} is not a JSON file: {e}.") from None
    if isinstance(doc, list):
        doc = {"messages": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
        raise SettingError(f"{path} holds no conversation: expected an object with a 'messages' list.")
    system = doc.get("system")
    if system is not None and not isinstance(system, str):
        raise SettingError(f"{path}: 'system' must be text or null.")
    messages = []
    for i, m in enumerate(doc["messages"]):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise SettingError(f"{path}: message {i + 1} needs a 'role' and a text 'content'.")
        role = m.get("role")
        if role == "system" and not messages:
            system = m["content"]
            continue
        if role not in ROLES:
            raise SettingError(f"{path}: message {i + 1} has role {role!r}; expected one of {', '.join(ROLES)}.")
        messages.append({"role": role, "content": m["content"]})
    settings = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
    model = doc.get("model") if isinstance(doc.get("model"), str) else None
    return LoadedConversation(messages, system or None, settings, model)


# -- figures -----------------------------------------------------------------------------------------


def tokens_per_joule(n_tokens: int, joules: float | None) -> float | None:
    if not joules or joules <= 0 or not math.isfinite(joules):
        return None
    return n_tokens / joules


def draft_acceptance(stats) -> float | None:
    """n_accepted / n_drafted of speculative decoding, None when nothing was drafted (no draft model)."""
    drafted = getattr(stats, "n_drafted", 0) or 0
    if drafted <= 0:
        return None
    return (getattr(stats, "n_accepted", 0) or 0) / drafted


def format_rate(value: float | None) -> str:
    if not value:
        return "-"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"
