"""Structured output, tool calling, reasoning and logprobs (issue 20), with the real models.

The library (SmolLM2 and Gemma 3; n-gram and draft speculation; a batch of 8 in the BatchRunner), and a
real `edgeinfer serve --parallel 8` process driven by the official `openai` client. Replies are short
(max_tokens <= 48) so the file stays around two minutes on two cores.
"""

from __future__ import annotations

import io

import json
import random

import jsonschema
import numpy as np
import openai
import pytest

import edgeinfer
from edgeinfer.repl import ChatSession
from edgeinfer.engine.batch import BatchRunner
from edgeinfer.engine.constrain import Grammar, GrammarError
from edgeinfer.engine.runner import Finish
from edgeinfer.engine.sampling import SamplingParams
from edgeinfer.tokenizer.chat import ChatTemplate
from edgeinfer.toolcalls import ReplyParser, ToolError

from chat_vocab import feed_in_pieces
from test_server import Server

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "kind": {"enum": ["cat", "dog", "person"]},
    },
    "required": ["name", "age", "kind"],
    "additionalProperties": False,
}
PROMPTS = ["Describe a pet as JSON.", "Give me a person record.", "Tell me about Bob, 42, a builder.",
           "Invent a character."]  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                    "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"],
                    "additionalProperties": False}}},
    {"type": "function", "function": {"name": "add", "description": "Add two numbers",
     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"], "additionalProperties": False}}},
]  # fmt: skip
WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def _valid(text: str) -> dict:
    obj = json.loads(text)
    jsonschema.validate(obj, SCHEMA)
    return obj


def _args_schema(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


@pytest.fixture(scope="module")
def smol(smollm2_path):
    return edgeinfer.load(smollm2_path, n_ctx=1024, progress=False)


@pytest.fixture(scope="module")
def gemma(gemma3_path):
    return edgeinfer.load(gemma3_path, n_ctx=1024, progress=False)


# -- the library: JSON schema, every reply valid


@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_json_schema_every_reply_validates(which, request):
    llm = request.getfixturevalue(which)
    rf = {"type": "json_schema", "json_schema": {"name": "rec", "schema": SCHEMA}}
    for i, prompt in enumerate(PROMPTS[: 3 if which == "smol" else 2]):
        for temperature, seed in ((0.0, None), (1.0, i), (1.0, 100 + i)):
            msgs = [{"role": "user", "content": prompt}]
            text = llm.chat(msgs, response_format=rf, temperature=temperature, seed=seed, max_tokens=48)
            assert llm.last_stats.finish_reason == "stop", text
            _valid(text)
    streamed = "".join(llm.chat([{"role": "user", "content": PROMPTS[0]}], response_format=rf, temperature=1.0,
                                seed=7, max_tokens=48, stream=True))  # fmt: skip
    _valid(streamed)


def test_json_schema_with_ngram_and_draft_speculation(smollm2_path, smol):
    drafted = edgeinfer.load(smollm2_path, n_ctx=1024, draft=smollm2_path, progress=False)  # itself as draft
    msgs = [{"role": "user", "content": 'Copy this record: {"name": "Bob", "age": 42, "tags": ["builder"], '
                                        '"kind": "person"}'}]  # n-gram drafts come from the prompt
    plain = smol.chat(msgs, json_schema=SCHEMA, temperature=0, max_tokens=48)
    for llm, mode in ((smol, "ngram"), (drafted, "draft")):
        text = llm.chat(msgs, json_schema=SCHEMA, temperature=0, max_tokens=48, speculative=mode)
        assert text == plain  # greedy: the same tokens with and without speculation
        assert llm.last_stats.n_drafted > 0
        for seed in (1, 2):
            _valid(llm.chat(msgs, json_schema=SCHEMA, temperature=1.0, seed=seed, max_tokens=48, speculative=mode))


def test_batch_of_8_each_its_own_matcher(smol):
    runner = BatchRunner(smol, parallel=8, max_queue=16, n_ctx=512)
    runner.start()
    try:
        g = Grammar.json_schema(SCHEMA)
        handles = []
        for i in range(8):
            ids = smol.tokenize_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
            grammar = g if i % 4 != 3 else None  # constrained and free requests side by side
            params = SamplingParams(temperature=0.0 if i % 2 else 1.0, seed=i)
            spec = "ngram" if i % 3 == 0 else None
            handles.append((grammar, runner.submit(ids, params, 48, speculative=spec, grammar=grammar, logprobs=1)))
        for grammar, h in handles:
            pieces, fin = [], None
            for ev in h.events_sync(timeout=300):
                if isinstance(ev, Finish):
                    fin = ev
                else:
                    pieces.append(ev)
            assert fin.reason in ("stop", "length") and fin.error is None
            assert len(fin.logprobs) == fin.n_generated
            if grammar is not None:
                assert fin.reason == "stop"
                _valid("".join(pieces))
    finally:
        runner.stop()


def test_bad_schema_and_grammar_raise(smol):
    with pytest.raises(GrammarError) as e:
        smol.chat(WEATHER, json_schema={"type": "object", "properties": {"a": {"type": "nope"}}}, max_tokens=4)
    assert e.value.field == "json_schema"
    with pytest.raises(GrammarError) as e:
        smol.generate("x", grammar="root ::= (", max_tokens=4)
    assert e.value.field == "grammar"
    with pytest.raises(GrammarError):
        smol.chat(WEATHER, response_format={"type": "json_schema", "json_schema": {"schema": 3}}, max_tokens=4)
    with pytest.raises(ToolError) as e:
        smol.chat(WEATHER, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e.value.field == "tool_choice"


# -- logprobs


@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_logprobs_are_log_softmax_of_the_logits(which, request):
    llm = request.getfixturevalue(which)
    ids = llm.tokenize_chat([{"role": "user", "content": "Name three colors."}])
    r = llm.chat([{"role": "user", "content": "Name three colors."}], logprobs=True, top_logprobs=3, temperature=0,
                 max_tokens=12)  # fmt: skip
    toks = [x.token for x in r.logprobs]
    assert llm.detokenize(toks).startswith(r.text) or r.text
    logits = llm.logits(ids + toks).astype(np.float64)
    for i, x in enumerate(r.logprobs):
        row = logits[len(ids) - 1 + i]
        ls = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
        assert abs(x.logprob - ls[x.token]) < 2e-3
        assert x.token == int(np.argmax(row)) or abs(ls[x.token] - ls.max()) < 1e-3  # greedy
        assert [t for t, _ in x.top][0] == x.token or abs(x.top[0][1] - x.logprob) < 1e-3
        assert len(x.top) == 3 and all(abs(lp - ls[t]) < 2e-3 for t, lp in x.top)


# -- tools in the library


@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_named_tool_choice_yields_a_valid_call(which, request):
    llm = request.getfixturevalue(which)
    for temperature, seed in ((0.0, None), (1.0, 1), (1.0, 2)):
        r = llm.chat(WEATHER, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                     temperature=temperature, seed=seed, max_tokens=48)  # fmt: skip
        assert r.finish_reason == "tool_calls" and len(r.tool_calls) == 1, r
        call = r.tool_calls[0]
        assert call.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.arguments), _args_schema("get_weather"))
    r = llm.chat([{"role": "user", "content": "What is 2 plus 3?"}], tools=TOOLS, tool_choice="required",
                 temperature=0, max_tokens=48, parallel_tool_calls=False)  # fmt: skip
    assert len(r.tool_calls) == 1 and r.finish_reason == "tool_calls"
    jsonschema.validate(json.loads(r.tool_calls[0].arguments), _args_schema(r.tool_calls[0].name))


def test_streamed_tool_call_deltas_reassemble_into_the_call(smol):
    kw = dict(tools=TOOLS, tool_choice="required", temperature=0, max_tokens=48, parallel_tool_calls=False)
    whole = smol.chat(WEATHER, **kw)
    calls: dict[int, list] = {}
    reason = None
    for d in smol.chat(WEATHER, stream=True, **kw):
        assert not d.content  # no markup leaks into content
        if d.tool_call is not None:
            c = calls.setdefault(d.tool_call.index, [None, ""])
            if d.tool_call.name is not None:
                assert c[0] is None and c[1] == ""  # the name first, then the arguments
                c[0] = d.tool_call.name
            c[1] += d.tool_call.arguments
        reason = d.finish_reason or reason
    assert reason == "tool_calls"
    assert [tuple(c) for _, c in sorted(calls.items())] == [(c.name, c.arguments) for c in whole.tool_calls]


def test_tool_results_render_and_the_reply_is_content(smol, gemma):
    convo = WEATHER + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
    ]  # fmt: skip
    for llm in (smol, gemma):
        from edgeinfer.toolcalls import plan_chat

        plan = plan_chat(llm.chat_template, llm.tokenizer, convo, TOOLS)
        assert "get_weather" in plan.prompt and "18 degrees, sunny" in plan.prompt and "Paris" in plan.prompt
        r = llm.chat(convo, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=16)
        assert r.tool_calls == [] and r.finish_reason in ("stop", "length") and r.text


def test_incremental_parser_any_chunking():
    cases = [
        ("hermes", 'Let me check.\n<tool_call>\n{"name": "f", "arguments": {"s": "a}\\"<b>", "n": [1, {"x": 2}]}}\n'
                   '</tool_call>\n<tool_call>\n{"arguments": {}, "name": "g"}\n</tool_call>'),
        ("hermes", "<think>\nplan < it</think>\n\nHello <b>there</b>"),
        ("generic", '{"tool_calls": [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {"y": "}"}}]}'),
        ("generic", '{"answer": 42, "name": "not a call"}'),
        ("llama3", '{"name": "f", "parameters": {"x": true}}'),
        ("mistral", '[TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]'),
    ]
    rng = random.Random(0)
    for family, text in cases:
        results = set()
        for size in (1, 2, 5, 1000):
            p = ReplyParser(family)
            _, content, _, calls = feed_in_pieces(p, text, size, rng)
            assert (content, calls) == (p.content, [(c.name, c.arguments) for c in p.tool_calls])
            assert "<tool_call>" not in p.content and "[TOOL_CALLS]" not in p.content and "<think>" not in p.content
            results.add((p.content, p.reasoning, tuple((c.name, c.arguments) for c in p.tool_calls)))
        assert len(results) == 1, results  # the same however the text was cut
    p = ReplyParser("hermes")
    p.feed(cases[0][1])
    p.finish()
    assert [c.name for c in p.tool_calls] == ["f", "g"] and json.loads(p.tool_calls[0].arguments)["s"] == 'a}"<b>'


# -- reasoning


def test_reasoning_budget_closes_the_think_block(smollm2_path):
    llm = edgeinfer.load(smollm2_path, n_ctx=1024, progress=False)
    t = llm.chat_template  # a template whose generation prompt opens a think block, as reasoning models' do
    llm.chat_template = ChatTemplate(t.source.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n<think>\n'"),
                                     "thinking", t.bos_token, t.eos_token)  # fmt: skip
    msgs = [{"role": "user", "content": "What is 2+3? Think step by step."}]
    for budget in (0, 6, 12):
        r = llm.chat(msgs, reasoning_budget=budget, temperature=0, max_tokens=40, logprobs=True)
        toks = [x.token for x in r.logprobs]
        close = llm.tokenize("</think>", add_special=False)
        text = llm.detokenize(toks)
        assert "</think>" in text
        n_think = len(llm.tokenize(text.split("</think>")[0], add_special=False))
        assert n_think <= budget + 1  # the block's tokens (re-tokenized) within the budget
        # the reply is what follows the block (the tiny model may write markup of its own later on)
        assert r.text == text.split("</think>", 1)[1].strip(), (r.text, text)
        assert r.reasoning == text.split("</think>")[0].strip()
        assert close
    # a grammar applies after the reasoning, not inside it
    r = llm.chat(msgs, reasoning_budget=8, json_schema=SCHEMA, temperature=0, max_tokens=60)
    assert r.reasoning and r.finish_reason == "stop"
    _valid(r.text)
    deltas = list(llm.chat(msgs, reasoning_budget=6, temperature=0, max_tokens=20, stream=True))
    assert "".join(d.reasoning for d in deltas).strip() and "</think>" not in "".join(d.content for d in deltas)
    # the interactive chat of `edgeinfer run MODEL --reasoning-budget N`: thinking to stderr, the answer
    # to stdout and into the conversation
    out, err = io.StringIO(), io.StringIO()
    session = ChatSession(llm, {"temperature": 0, "max_tokens": 20}, stdin=io.StringIO("What is 2+3? Think step by step.\n"),
                          stdout=out, stderr=err, reasoning_budget=6)  # fmt: skip
    assert session.run() == 0
    reasoning = "".join(d.reasoning for d in deltas)
    answer = "".join(d.content for d in deltas)
    assert err.getvalue() == reasoning and answer in out.getvalue() and "</think>" not in out.getvalue()
    assert session.chat.messages[-1] == {"role": "assistant", "content": answer}


# -- the server, with the openai client


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve-structured"), "--parallel", "8", "--ctx-size", "512")
    yield s
    s.stop()


def test_server_response_format_streamed_and_batched(server):
    from concurrent.futures import ThreadPoolExecutor

    client = server.client()
    rf = {"type": "json_schema", "json_schema": {"name": "rec", "schema": SCHEMA, "strict": True}}

    def one(i):
        msgs = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        kw = dict(model="m", messages=msgs, response_format=rf, max_tokens=48, temperature=1.0 if i % 2 else 0.0,
                  seed=i)  # fmt: skip
        if i % 4 == 1:
            kw["extra_body"] = {"speculative": "ngram"}
        if i % 2:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                           if c.choices)  # fmt: skip
        else:
            r = client.chat.completions.create(**kw)
            assert r.choices[0].finish_reason == "stop"
            text = r.choices[0].message.content
        return _valid(text)

    with ThreadPoolExecutor(8) as pool:
        assert len(list(pool.map(one, range(8)))) == 8
    r = client.chat.completions.create(model="m", messages=WEATHER, response_format={"type": "json_object"},
                                       max_tokens=32, temperature=0)  # fmt: skip
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    # llama-server's shapes: json_schema and grammar (GBNF) fields
    r = server.http.post("/v1/chat/completions", json={"messages": WEATHER, "json_schema": SCHEMA, "max_tokens": 48,
                                                       "temperature": 0})  # fmt: skip
    _valid(r.json()["choices"][0]["message"]["content"])
    r = server.http.post("/v1/completions", json={"prompt": "The answer is", "grammar": 'root ::= "yes" | "no"',
                                                  "max_tokens": 8})  # fmt: skip
    assert r.json()["choices"][0]["text"] in ("yes", "no")


def test_server_bad_schema_or_grammar_is_400(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=WEATHER, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": 5}}})
    assert e.value.body["param"].startswith("response_format")
    for body, param in (({"grammar": "root ::= ("}, "grammar"), ({"json_schema": "{not json"}, "json_schema"),
                        ({"response_format": {"type": "xml"}}, "response_format.type"),
                        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
                        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice")):  # fmt: skip
        r = server.http.post("/v1/chat/completions", json={"messages": WEATHER, "max_tokens": 4, **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = server.http.post("/v1/completions", json={"prompt": "x", "grammar": "root ::= (", "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grammar"


def test_server_tools_named_required_and_streamed(server):
    client = server.client()
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model="m", messages=WEATHER, tools=TOOLS, tool_choice=named, max_tokens=48,
                                       temperature=0)  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), _args_schema("get_weather"))
    for choice_ in (named, "required"):
        whole = client.chat.completions.create(model="m", messages=WEATHER, tools=TOOLS, tool_choice=choice_,
                                               max_tokens=48, temperature=0,
                                               parallel_tool_calls=False).choices[0].message.tool_calls  # fmt: skip
        calls: dict[int, list] = {}
        reason = None
        for chunk in client.chat.completions.create(model="m", messages=WEATHER, tools=TOOLS, tool_choice=choice_,
                                                    max_tokens=48, temperature=0, stream=True,
                                                    parallel_tool_calls=False):  # fmt: skip
            if not chunk.choices:
                continue
            d = chunk.choices[0].delta
            assert not d.content
            for tc in d.tool_calls or []:
                c = calls.setdefault(tc.index, [None, "", None])
                if tc.function.name:
                    c[0], c[2] = tc.function.name, tc.id
                c[1] += tc.function.arguments or ""
            reason = chunk.choices[0].finish_reason or reason
        assert reason == "tool_calls"
        assert [(c[0], c[1]) for _, c in sorted(calls.items())] == [(w.function.name, w.function.arguments)
                                                                     for w in whole]  # fmt: skip
    # a tool result, then a reply in content
    convo = WEATHER + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                       {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}]  # fmt: skip
    r = client.chat.completions.create(model="m", messages=convo, tools=TOOLS, max_tokens=16, temperature=0)
    assert r.choices[0].message.content


def test_server_logprobs_chat_and_completions(server, smol):
    client = server.client()
    r = client.chat.completions.create(model="m", messages=WEATHER, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=2)  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    lib = smol.chat(WEATHER, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    assert [c.logprob for c in content] == pytest.approx([x.logprob for x in lib.logprobs], abs=1e-3)
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content)
    assert "".join(c.token for c in content).startswith(r.choices[0].message.content.strip()[:3])
    streamed = [lp for chunk in client.chat.completions.create(model="m", messages=WEATHER, max_tokens=8,
                                                                temperature=0, logprobs=True, stream=True)
                if chunk.choices and chunk.choices[0].logprobs for lp in chunk.choices[0].logprobs.content]  # fmt: skip
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content], abs=1e-4)
    r = client.completions.create(model="m", prompt="The sky is", max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == 6
    assert all(len(t) <= 3 for t in lp.top_logprobs) and lp.text_offset[0] == 0
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=WEATHER, max_tokens=4, top_logprobs=2)
