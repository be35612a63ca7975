"""What the chat app knows without a screen beyond edgeinfer.chat (the conversation, settings parsing and
checking, shared with `edgeinfer run`): the conversation file format and the figures of the status bar.
Kept apart from the widgets so it is easy to test and to reuse.

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

from edgeinfer.chat import SETTABLE, SettingError, parse_setting, setting_name, validate_params
from edgeinfer.engine.sampling import SamplingParams
from edgeinfer.fsutil import atomic_write_text

__all__ = [
    "PANEL_SETTINGS", "SETTABLE", "SettingError", "describe_params", "draft_acceptance", "format_rate",
    "load_conversation", "parse_setting", "save_conversation", "setting_name", "tokens_per_joule",
    "validate_params",
]  # fmt: skip

FORMAT = "edgeinfer-chat"
VERSION = 1
ROLES = ("user", "assistant")

# the settings the app shows and changes (the rest of `run`'s sampling flags pass through untouched)
PANEL_SETTINGS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens", "seed")


def describe_params(params: dict) -> str:
    """"temp 0.8 · top-p 0.95 · max 512 · seed random" for the status bar (absent: SamplingParams' defaults)."""
    seed = params.get("seed")
    parts = [
        f"temp {params.get('temperature', SamplingParams.temperature):g}",
        f"top-p {params.get('top_p', SamplingParams.top_p):g}",
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
        atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")  # a crash keeps the old file
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
