"""edgeinfer.chat: the conversation `edgeinfer run` and the chat app share (no model, no screen)."""

from __future__ import annotations

import dataclasses

import pytest

from edgeinfer.chat import (
    REPLY_MAX_TOKENS,
    SETTABLE,
    Conversation,
    SettingError,
    default_params,
    dropped_turns,
    parse_setting,
    setting_name,
    validate_params,
)
from edgeinfer.engine.sampling import SamplingParams


class FakeLLM:
    """n_ctx and tokenize_chat: ten tokens a message."""

    def __init__(self, n_ctx: int):
        self.n_ctx = n_ctx

    def tokenize_chat(self, messages, add_generation_prompt=True):
        return [0] * (10 * len(messages))


def test_settable_names_come_from_sampling_params():
    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    assert set(SETTABLE) - {"max_tokens"} <= fields
    assert {"temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed"} <= set(SETTABLE)
    assert SETTABLE["top_k"] is int and SETTABLE["temperature"] is float and SETTABLE["seed"] is int
    d = SamplingParams()
    params = default_params()
    assert params["max_tokens"] == REPLY_MAX_TOKENS
    assert all(params[k] == getattr(d, k) for k in SETTABLE if k != "max_tokens")


def test_parse_setting():
    assert parse_setting("temp", "0.3") == ("temperature", 0.3)
    assert parse_setting("top-p", "0.5") == ("top_p", 0.5)
    assert parse_setting("TopK", "7") == ("top_k", 7)
    assert parse_setting("n", "12") == ("max_tokens", 12)
    assert parse_setting("seed", "random") == ("seed", None) and parse_setting("seed", "42") == ("seed", 42)
    with pytest.raises(SettingError, match="Cannot set 'warp'"):
        parse_setting("warp", "9")
    with pytest.raises(SettingError, match="top_k needs an integer"):
        parse_setting("top_k", "banana")
    with pytest.raises(SettingError, match="temperature needs a value"):
        parse_setting("temperature", "")
    assert setting_name("num_predict") == "max_tokens"


def test_validate_params():
    validate_params({**default_params(), "speculative": "ngram", "draft_max": 4})  # others pass through
    with pytest.raises(SettingError, match="top_p"):
        validate_params({"top_p": 2.0})
    with pytest.raises(SettingError, match="max_tokens"):
        validate_params({"max_tokens": 0})


def test_set_stores_only_what_is_valid():
    chat = Conversation({"temperature": 0.5, "max_tokens": 8}, system="Be brief.")
    assert chat.set("temp", "0") == ("temperature", 0.0) and chat.params["temperature"] == 0.0
    with pytest.raises(SettingError):
        chat.set("min_p", "3")
    assert "min_p" not in chat.params
    assert chat.for_model() == [{"role": "system", "content": "Be brief."}]
    assert Conversation(system="").system is None and Conversation().params == default_params()


def test_fit_drops_the_oldest_turns_and_says_which():
    chat = Conversation({"max_tokens": 20}, system="sys")
    for i in range(3):
        chat.messages += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    chat.messages.append({"role": "user", "content": "q3"})
    assert chat.fit(FakeLLM(n_ctx=200)) == []  # 8 messages: 80 tokens
    dropped = chat.fit(FakeLLM(n_ctx=60))  # budget 40: the system prompt and three messages
    assert [m["content"] for m in dropped] == ["q0", "a0", "q1", "a1"]
    assert [m["content"] for m in chat.for_model()] == ["sys", "q2", "a2", "q3"]
    assert dropped_turns(dropped) == 2
    dropped = chat.fit(FakeLLM(n_ctx=10))  # the newest message always stays
    assert [m["content"] for m in chat.messages] == ["q3"] and dropped_turns(dropped) == 1
