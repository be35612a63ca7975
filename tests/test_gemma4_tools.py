"""Gemma 4's tool calls and thinking (toolcalls.py family "gemma4", gemma_calls.py): its call syntax to and
from JSON, the reply parser, and the grammars for required/named calls built from the tools' schemas in
that syntax. With Gemma 4's real chat template (tests/fixtures/templates, from llama.cpp's
models/templates) and a byte-level vocabulary holding its special tokens; the "model" is random logits
under each constraint's mask, so whatever the masks allow is checked, not one reply."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from edgeinfer import gemma_calls
from edgeinfer.toolcalls import ReasoningConstraint, ReplyParser, plan_chat

from chat_vocab import feed_in_pieces, forced_call, special_vocab
from test_structured import TOOLS

TEMPLATE = Path(__file__).parent / "fixtures" / "templates" / "google-gemma-4-31B-it.jinja"
SPECIALS = ["<bos>", "<eos>", "<|turn>", "<turn|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>",
            "<|tool_response>", "<tool_response|>", '<|"|>', "<|channel>", "<channel|>", "<|think|>"]  # fmt: skip
MORE_TOOLS = TOOLS + [
    {"type": "function", "function": {"name": "plan", "description": "A plan",
     "parameters": {"type": "object", "properties": {
         "steps": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
         "urgent": {"type": "boolean"}, "budget": {"type": "number"},
         "owner": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5}}, "required": ["name"]}},
         "required": ["steps"]}}},
]  # fmt: skip


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma4") / "vocab.gguf"
    return special_vocab(path, "gemma4", SPECIALS, [3, 3, 3, 3] + [4] * (len(SPECIALS) - 4), TEMPLATE,
                         bos_token_id="<bos>", eos_token_id="<eos>")  # fmt: skip


def test_call_syntax_round_trip():
    rng = random.Random(0)
    for _ in range(200):
        def val(d):
            k = rng.randrange(7 if d < 3 else 4)
            return [lambda: rng.choice(["", "Paris", "a<b,c}d]", "x:y", "ü 7"]), lambda: rng.randint(-99, 99),
                    lambda: rng.choice([True, False]), lambda: rng.choice([0.5, -2.25, 1e-3]),
                    lambda: {f"k{i}": val(d + 1) for i in range(rng.randrange(3))},
                    lambda: [val(d + 1) for _ in range(rng.randrange(3))], lambda: None][k]()
        v = {f"p{i}": val(0) for i in range(rng.randrange(4))}
        assert json.loads(gemma_calls.to_json(gemma_calls.from_value(v))) == v
    for bad in ("{a:}", "{a:<|\"|>x}", "{a:1", "{a 1}", "[1,}"):
        with pytest.raises(ValueError):
            gemma_calls.to_json(bad)


def test_template_renders_and_calls_parse_back(gemma4):
    tok, template = gemma4
    plan = plan_chat(template, tok, [{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS)
    assert plan.family == "gemma4" and plan.grammar is None
    assert "<|tool>declaration:get_weather{" in plan.prompt and plan.prompt.endswith("<|turn>model\n<|channel>thought\n<channel|>")
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"unit": "celsius", "city": "Oslo"}'}}
    msgs = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "4 C"}]  # fmt: skip
    text = plan_chat(template, tok, msgs, tools=TOOLS).prompt
    rendered = '<|tool_call>call:get_weather{city:<|"|>Oslo<|"|>,unit:<|"|>celsius<|"|>}<tool_call|>'
    assert rendered in text and '<|tool_response>response:get_weather{value:<|"|>4 C<|"|>}<tool_response|>' in text
    p = ReplyParser("gemma4")
    p.feed(rendered)
    p.finish()
    assert [(c.name, json.loads(c.arguments)) for c in p.tool_calls] == [("get_weather", {"city": "Oslo", "unit": "celsius"})]


def test_parser_any_chunking():
    cases = [  # (reply, content, reasoning, calls)
        ("<|channel>thought\nThe user wants <weather>.<channel|>Checking. "
         '<|tool_call>call:get_weather{city:<|"|>Par,is}<|"|>,unit:<|"|>celsius<|"|>}<tool_call|>',
         "Checking. ", "The user wants <weather>.", [("get_weather", '{"city": "Par,is}", "unit": "celsius"}')]),
        ('<|tool_call>call:add{a:1,b:-2}<tool_call|><|tool_call>call:plan{steps:[<|"|>a<|"|>],urgent:true}<tool_call|>',
         "", "", [("add", '{"a": 1, "b": -2}'), ("plan", '{"steps": ["a"], "urgent": true}')]),
        ("Hello <b>there</b>, <|channel is not a marker", "Hello <b>there</b>, <|channel is not a marker", "", []),
        ("<|channel>thought\nshort<channel|>\n\nAnswer.", "Answer.", "short", []),
        ("<|tool_call>call:add{a:1", "", "", [("add", "{a:1")]),  # cut short: the text as written
    ]  # fmt: skip
    rng = random.Random(1)
    for text, content, reasoning, calls in cases:
        for size in (1, 2, 3, 7, 1000):
            p = ReplyParser("gemma4")
            streamed = feed_in_pieces(p, text, size, rng)[1:]
            got = (p.content, p.reasoning, [(c.name, c.arguments) for c in p.tool_calls])
            assert got == (content, reasoning, calls), (size, got)
            assert streamed == (content, reasoning, calls)


@pytest.mark.parametrize("choice", ["required", "plan"])
def test_required_and_named_calls_follow_the_schema(gemma4, choice):
    tok, template = gemma4
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in MORE_TOOLS}
    stop = set(tok.eog_ids)
    seen = set()
    for seed in range(16):
        tc = choice if choice == "required" else {"type": "function", "function": {"name": choice}}
        plan = plan_chat(template, tok, [{"role": "user", "content": "Go."}], tools=MORE_TOOLS, tool_choice=tc,
                         parallel_tool_calls=False)  # fmt: skip
        seen.add(forced_call(plan, tok, seed, 400, stop, schemas, choice))
    assert choice != "required" or seen == set(schemas)


def test_reasoning_budget_closes_the_thought_channel(gemma4):
    tok, template = gemma4
    msgs = [{"role": "user", "content": "Think first."}]
    assert plan_chat(template, tok, msgs, reasoning_budget=5).grammar is None  # thinking off: nothing to bound
    on = {"enable_thinking": True}
    assert "<|think|>" in plan_chat(template, tok, msgs, template_kwargs=on).prompt
    a_id = tok.vocab.token_to_id["a"]
    for budget in (0, 4, 11):
        plan = plan_chat(template, tok, msgs, reasoning_budget=budget, template_kwargs=on)
        m = plan.grammar.matcher(tok)
        assert isinstance(m, ReasoningConstraint)
        script = tok.encode("<|channel>thought\n", add_special=False, parse_special=True)
        close = tok.vocab.token_to_id["<channel|>"]
        ids = []
        for _ in range(len(script) + budget + 6):  # a model that opens the channel, then thinks "aaaa..."
            logits = np.zeros(tok.n_vocab, dtype=np.float32)
            logits[script[len(ids)] if len(ids) < len(script) and close not in ids else a_id] = 5.0
            t = int(np.argmax(m.mask(logits)))
            ids.append(t)
            m.consume(t)
        text = tok.decode(ids)
        n_name = len(script) - 1  # "thought\n" counts against the budget as the block's first tokens
        assert text.startswith("<|channel>" + ("thought\n" + "a" * max(0, budget - n_name))[:budget] + "<channel|>"), text
        p = plan.parser()
        p.feed(text)
        p.finish()
        assert "<channel|>" not in p.content and set(p.content) <= {"a"} and "<|channel>" not in p.reasoning


def test_template_kwargs_are_checked(gemma4):
    from edgeinfer.toolcalls import ToolError

    tok, template = gemma4
    msgs = [{"role": "user", "content": "Hi"}]
    for bad in ([1], {"messages": []}, {"add_generation_prompt": False}, {"x": object()}, {"not a name": 1}):
        with pytest.raises(ToolError, match="chat_template_kwargs"):
            plan_chat(template, tok, msgs, template_kwargs=bad)
