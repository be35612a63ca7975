"""Constrained decoding in the engine core (engine/constrain.py, core.py, verify.py): grammars compile or
fail closed, every chosen token obeys the grammar alone, in a batch and under speculation (a forbidden
draft is a rejection), and logprobs are log_softmax of the raw logits at the chosen tokens."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from edgeinfer.api import load
from edgeinfer.engine.constrain import Grammar, GrammarError, grammar_from_request
from edgeinfer.engine.core import Engine, Request
from edgeinfer.engine.sampling import SamplingParams
from edgeinfer.engine.speculative import Speculator

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                   "pets": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}  # fmt: skip
ASK = [{"role": "user", "content": "Describe a person as JSON with a name, an age and their pets."}]


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return load(smollm2_path, n_ctx=512, progress=False)


def test_requests_compile_or_fail_closed():
    assert grammar_from_request() is None and grammar_from_request(response_format={"type": "text"}) is None
    assert grammar_from_request(response_format={"type": "json_object"}).source == "json_schema"
    g = grammar_from_request(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}})
    assert g.source == "json_schema"
    assert grammar_from_request(grammar='root ::= "yes" | "no"').source == "gbnf"
    assert grammar_from_request(grammar='start: "a"+').source == "gbnf"  # Lark passes through
    assert grammar_from_request(regex="[0-9]{3}").source == "regex"
    cases = [
        (dict(response_format={"type": "xml"}), "response_format.type"),
        (dict(response_format={"type": "json_schema"}), "response_format.json_schema"),
        (dict(response_format="json"), "response_format"),
        (dict(json_schema={"$ref": "#/nowhere"}), "json_schema"),
        (dict(json_schema="{not json"), "json_schema"),
        (dict(grammar="root ::= (unclosed"), "grammar"),
        (dict(grammar=""), "grammar"),
        (dict(regex="(["), "regex"),
        (dict(grammar='root ::= "a"', json_schema={}), "json_schema"),
    ]
    for kw, field in cases:
        with pytest.raises(GrammarError) as e:
            grammar_from_request(**kw)
        assert e.value.field == field, (kw, e.value.field, str(e.value))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_replies_validate_alone_and_with_ngram_speculation(llm, temperature):
    for seed in range(3):
        for spec in (None, "ngram"):
            text = llm.chat(ASK, max_tokens=120, temperature=temperature, seed=seed, json_schema=SCHEMA, speculative=spec)
            assert llm.last_stats.finish_reason == "stop", text
            jsonschema.validate(json.loads(text), SCHEMA)


def test_greedy_text_identical_with_speculation_under_a_grammar(llm):
    """A draft the grammar forbids is rejected: with the model drafting for itself through a grammar-free
    proposer, the constrained greedy reply is the same with and without speculation."""
    want = llm.chat(ASK, max_tokens=80, temperature=0, json_schema=SCHEMA, speculative=None)
    for spec in ("ngram",):
        assert llm.chat(ASK, max_tokens=80, temperature=0, json_schema=SCHEMA, speculative=spec) == want
    engine = Engine(llm.model, llm.tokenizer, llm.n_ctx)
    ids = llm.tokenize_chat(ASK)
    spec = Speculator.draft(llm.model, llm.n_ctx)  # the model itself, unconstrained: its drafts break the grammar
    seq = engine.sequence(Request(ids, SamplingParams(temperature=0), 80, grammar=Grammar.json_schema(SCHEMA)),
                          speculator=spec)  # fmt: skip
    while seq.finish is None:
        engine.step([engine.next_work(seq)])
    assert llm.detokenize(seq.generated[:-1]) == want
    assert spec.n_drafted > spec.n_accepted  # some drafts were forbidden and rejected


def test_batch_of_eight_each_with_its_own_grammar(llm):
    engine = Engine(llm.model, llm.tokenizer, llm.n_ctx)
    schemas = [SCHEMA, {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}]
    seqs = []
    for i in range(8):
        params = SamplingParams(temperature=1.0 if i % 3 else 0.0, seed=i)
        req = Request(llm.tokenize_chat(ASK), params, 100, grammar=Grammar.json_schema(schemas[i % 2]), logprobs=1)
        seqs.append(engine.sequence(req))
    while any(s.finish is None for s in seqs):
        engine.step([engine.next_work(s) for s in seqs if s.finish is None])
    for i, s in enumerate(seqs):
        assert s.finish == "stop"
        jsonschema.validate(json.loads(llm.detokenize(s.generated[:-1])), schemas[i % 2])
        assert len(s.logprobs) == len(s.generated) and all(len(lp.top) == 1 for lp in s.logprobs)


def test_logprobs_are_log_softmax_of_the_logits(llm):
    prompt = llm.tokenize("The capital of France is")
    llm.generate(prompt, max_tokens=8, temperature=0, logprobs=3, speculative=None)
    stats = llm.last_stats
    tokens = stats.tokens
    logits = llm.logits(prompt + tokens[:-1])[len(prompt) - 1 :].astype(np.float64)
    ref = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    for i, (tok, lp) in enumerate(zip(tokens, stats.logprobs)):
        assert lp.token == tok
        assert lp.logprob == pytest.approx(ref[i, tok], abs=1e-4)
        assert [t for t, _ in lp.top] == list(np.argsort(-ref[i], kind="stable")[:3])
        assert lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
    with pytest.raises(Exception, match="logprobs"):
        llm.generate(prompt, max_tokens=2, logprobs=-1)


def test_regex_and_gbnf_hold(llm):
    text = llm.generate("My phone number is", max_tokens=20, temperature=1.0, seed=1, regex=r"[0-9]{3}-[0-9]{4}")
    assert len(text) == 8 and text[3] == "-" and text.replace("-", "").isdigit()
    text = llm.chat([{"role": "user", "content": "Is the sky blue?"}], max_tokens=5, temperature=0,
                    grammar='root ::= "yes" | "no"')  # fmt: skip
    assert text in ("yes", "no")
    with pytest.raises(GrammarError):
        llm.generate("x", max_tokens=2, grammar="root ::= (")
