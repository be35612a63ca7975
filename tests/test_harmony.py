"""gpt-oss's harmony format (toolcalls.py, family "harmony"): the reply's channels split into reasoning,
content and tool calls; the grammars for a required tool call and a response schema, and the reasoning
budget, in harmony's own markers. With gpt-oss's real chat template (tests/fixtures/templates, from
llama.cpp's models/templates) and a byte-level vocabulary holding harmony's special tokens; the "model"
is random logits under each constraint's mask, so every reply the masks allow is checked, not one."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from edgeinfer.tokenizer.chat import ChatTemplate
from edgeinfer.toolcalls import HarmonyParser, ReasoningConstraint, plan_chat

from chat_vocab import feed_in_pieces, forced_call, sample_constrained, special_vocab
from test_structured import TOOLS

TEMPLATE = Path(__file__).parent / "fixtures" / "templates" / "openai-gpt-oss-120b.jinja"
SPECIALS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>",
            "<|endoftext|>"]  # fmt: skip
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}, "ok": {"type": "boolean"}},
          "required": ["name", "ok"], "additionalProperties": False}  # fmt: skip


@pytest.fixture(scope="module")
def harmony(tmp_path_factory):
    path = tmp_path_factory.mktemp("harmony") / "vocab.gguf"
    return special_vocab(path, "gpt-oss", SPECIALS, [3] * len(SPECIALS), TEMPLATE, eos_token_id="<|return|>",
                         padding_token_id="<|endoftext|>")  # fmt: skip


def test_template_family_and_specials(harmony):
    tok, template = harmony
    plan = plan_chat(template, tok, [{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS)
    assert plan.family == "harmony" and plan.grammar is None
    assert plan.prompt.endswith("<|start|>assistant") and "functions" in plan.prompt and "get_weather" in plan.prompt
    # the markers are single tokens in the prompt and render back as text in a reply
    ids = [tok.vocab.token_to_id[s] for s in ("<|channel|>", "<|message|>", "<|end|>", "<|start|>")]
    assert ids[1] in plan.prompt_ids and ids[3] in plan.prompt_ids
    assert tok.decode(ids) == "<|channel|><|message|><|end|><|start|>"
    # a call and its result in the history render as the template renders them, and the call parses back
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    msgs = [{"role": "user", "content": "1+2?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "3"}]  # fmt: skip
    text = plan_chat(template, tok, msgs, tools=TOOLS).prompt
    rendered = '<|start|>assistant to=functions.add<|channel|>commentary json<|message|>{"a": 1, "b": 2}<|call|>'
    assert rendered in text and "<|start|>functions.add to=assistant<|channel|>commentary<|message|>" in text
    # the analysis that led to a call goes back to the model (OpenAI clients send it as reasoning_content)
    from edgeinfer.server import protocol as P

    body = {"messages": msgs[:1] + [{**msgs[1], "reasoning_content": "Add them."}] + msgs[2:]}
    text = plan_chat(template, tok, P.parse_chat_request(body).messages, tools=TOOLS).prompt
    assert "<|start|>assistant<|channel|>analysis<|message|>Add them.<|end|>" + rendered in text
    p = HarmonyParser()
    p.feed(rendered[len("<|start|>assistant"):].replace("<|call|>", ""))
    p.finish()
    assert [(c.name, json.loads(c.arguments)) for c in p.tool_calls] == [("add", {"a": 1, "b": 2})]


def test_parser_any_chunking():
    cases = [  # (text after the generation prompt, content, reasoning, calls)
        ('<|channel|>analysis<|message|>Needs the tool <x>.<|end|><|start|>assistant<|channel|>commentary '
         'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris", "unit": "celsius"}',
         "", "Needs the tool <x>.", [("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
        (' to=functions.add<|channel|>commentary json<|message|>{"a": 1, "b": 2}', "", "", [("add", '{"a": 1, "b": 2}')]),
        ("<|channel|>analysis<|message|>one<|end|><|start|>assistant<|channel|>analysis<|message|>two<|end|>"
         "<|start|>assistant<|channel|>final<|message|>Hello <b>there</b> to=you", "Hello <b>there</b> to=you",
         "one\ntwo", []),
        ("<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant<|channel|>final<|message|>Done.",
         "Checking.Done.", "", []),
        ("assistance, no header at all <|", "assistance, no header at all <|", "", []),
        ("<|channel|>analysis<|message|>cut short", "", "cut short", []),
    ]  # fmt: skip
    rng = random.Random(0)
    for text, content, reasoning, calls in cases:
        for size in (1, 2, 3, 7, 1000):
            p = HarmonyParser()
            streamed = feed_in_pieces(p, text, size, rng)[1:]
            assert (p.content, p.reasoning, [(c.name, c.arguments) for c in p.tool_calls]) == (content, reasoning, calls)
            assert streamed == (content, reasoning, calls)
    p = HarmonyParser(tools=False)  # tool_choice "none": a call-shaped message is content
    p.feed(cases[1][0])
    p.finish()
    assert not p.tool_calls and p.content == cases[1][0].split("<|message|>")[1]


@pytest.mark.parametrize("choice", ["required", "add"])
def test_required_and_named_calls_parse_and_validate(harmony, choice):
    tok, template = harmony
    names = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    stop = {tok.vocab.token_to_id["<|call|>"], tok.vocab.token_to_id["<|return|>"]}
    seen = set()
    for seed in range(12):
        tc = choice if choice == "required" else {"type": "function", "function": {"name": choice}}
        plan = plan_chat(template, tok, [{"role": "user", "content": "Go."}], tools=TOOLS, tool_choice=tc)
        seen.add(forced_call(plan, tok, seed, 200, stop, names, choice))
    assert choice != "required" or seen == set(names)  # both tools were reachable


def test_response_schema_is_the_final_message(harmony):
    tok, template = harmony
    from edgeinfer.engine.constrain import Grammar

    stop = {tok.vocab.token_to_id["<|return|>"], tok.vocab.token_to_id["<|call|>"]}
    kinds = set()
    for tools, choice in ((None, None), (TOOLS, "auto"), (TOOLS, "none")):
        for seed in range(8):
            plan = plan_chat(template, tok, [{"role": "user", "content": "JSON please."}], tools=tools,
                             tool_choice=choice, grammar=Grammar.json_schema(SCHEMA))  # fmt: skip
            text = tok.decode(sample_constrained(plan.grammar.matcher(tok), tok, np.random.default_rng(seed), 200, stop))
            p = plan.parser()
            p.feed(text)
            p.finish()
            if p.tool_calls:
                assert choice == "auto" and not p.content
                kinds.add("call")
            else:
                assert text.startswith("<|channel|>final<|message|>"), text
                jsonschema.validate(json.loads(p.content), SCHEMA)
                kinds.add("final")
    assert kinds == {"call", "final"}


def test_reasoning_budget_closes_the_analysis(harmony):
    tok, template = harmony
    msgs = [{"role": "user", "content": "Think, then answer."}]
    assert plan_chat(template, tok, msgs).grammar is None  # no budget, no grammar: the model is free
    a_id = tok.vocab.token_to_id["a"]
    for budget in (0, 5, 17):
        plan = plan_chat(template, tok, msgs, reasoning_budget=budget)
        m = plan.grammar.matcher(tok)
        assert isinstance(m, ReasoningConstraint)
        # a model that opens the analysis channel and then would think forever ("aaaa...")
        script = tok.encode("<|channel|>analysis<|message|>", add_special=False, parse_special=True)
        ids = []
        for _ in range(len(script) + budget + 40):
            logits = np.zeros(tok.n_vocab, dtype=np.float32)
            logits[script[len(ids)] if len(ids) < len(script) else a_id] = 5.0
            t = int(np.argmax(m.mask(logits)))
            ids.append(t)
            m.consume(t)
        text = tok.decode(ids)
        assert text.startswith("<|channel|>analysis<|message|>" + "a" * budget + "<|end|><|start|>assistant<|channel|>final<|message|>")
        p = plan.parser()
        p.feed(text)
        p.finish()
        answer = text.split("<|channel|>final<|message|>", 1)[1]
        assert p.reasoning == "a" * budget and p.content == answer and set(answer) == {"a"}
    # a model that goes straight to its final answer is not held back
    m = plan_chat(template, tok, msgs, reasoning_budget=3).grammar.matcher(tok)
    for t in tok.encode("<|channel|>final<|message|>Hi", add_special=False, parse_special=True):
        logits = np.zeros(tok.n_vocab, dtype=np.float32)
        logits[t] = 1.0
        assert int(np.argmax(m.mask(logits))) == t
        m.consume(t)
    assert m.state == "after"


def test_library_chat_answers_with_the_final_channel(smollm2_path, monkeypatch):
    """LLM.chat on a harmony-template model: the plain call returns the final channel's text (the
    conversation can go on: gpt-oss's template refuses <|channel|> markup in a message's content)."""
    import edgeinfer

    llm = edgeinfer.load(smollm2_path, n_ctx=512, progress=False)
    llm.chat_template = ChatTemplate(TEMPLATE.read_text(), "gpt-oss")
    reply = ["<|channel|>analysis", "<|message|>The user greets.", "<|end|><|start|>assistant<|channel|>fi",
             "nal<|message|>Hel", "lo!"]  # fmt: skip
    from types import SimpleNamespace

    def generate(ids, **kw):  # the engine's part is tested elsewhere: here, what chat() makes of a reply
        llm.last_stats = SimpleNamespace(finish_reason="stop", logprobs=None)
        return iter(reply)

    monkeypatch.setattr(llm, "generate", generate)
    msgs = [{"role": "user", "content": "Hi"}]
    assert llm.chat(msgs) == "Hello!"
    assert list(llm.chat(msgs, stream=True)) == ["Hel", "lo!"]
    r = llm.chat(msgs, reasoning_budget=100)
    assert (r.text, r.reasoning) == ("Hello!", "The user greets.")
    llm.chat_template.render(msgs + [{"role": "assistant", "content": llm.chat(msgs)}, {"role": "user", "content": "Bye"}])


def test_server_takes_chat_template_kwargs():
    from edgeinfer.server import protocol as P

    body = {"messages": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": {"enable_thinking": False}}
    assert P.parse_chat_request(body).chat_template_kwargs == {"enable_thinking": False}
    for bad in ("yes", {"messages": 1}):
        with pytest.raises(P.RequestError, match="chat_template_kwargs"):
            P.parse_chat_request({**body, "chat_template_kwargs": bad})
