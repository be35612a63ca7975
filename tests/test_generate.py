"""Generation on the real SmolLM2: greedy text against llama.cpp's, streaming, stops, seeds, context."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.api import load
from edgeinfer.engine.generate import ReplyText, StopFilter
from edgeinfer.errors import ContextFullError, EdgeInferError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return load(smollm2_path, n_ctx=256)


# -- the stop-string filter --------------------------------------------------------------------------


def feed(stops, pieces):
    f = StopFilter(stops)
    out = [f.push(p) for p in pieces]
    if not f.stopped:
        out.append(f.flush())
    return "".join(out), f.stopped


def test_stop_filter_cuts_before_the_stop():
    assert feed(["END"], ["abc E", "N", "D more"]) == ("abc ", True)
    assert feed(["END"], ["abc E", "NX"]) == ("abc ENX", False)  # a false start is released
    assert feed(["\n\n", "User:"], ["Hi", "\n", "\nUser: x"]) == ("Hi", True)
    assert feed([], ["a", "b"]) == ("ab", False)


def test_stop_filter_holds_back_only_possible_prefixes():
    f = StopFilter(["</s>"])
    assert f.push("hello <") == "hello "  # '<' may start the stop string
    assert f.push("b>") == "<b>"


# -- the real model ----------------------------------------------------------------------------------


def test_reply_text_end_rules(llm):
    """The end rules shared by plain, speculative and batched decoding: EOG ends as "stop" (held-back
    text still shown), a stop string ends at the token completing it (its text never shown), max_tokens
    ends as "length", and text held back at the end that completes a stop string ends it as "stop"."""
    tok = llm.tokenizer
    ids = tok.encode("Hello there, friend", add_special=False)
    eog = next(t for t in range(tok.n_vocab) if tok.is_eog(t))

    r = ReplyText(tok, (), max_tokens=100)
    text = "".join(r.push(t) for t in ids)
    assert r.finish is None
    assert r.push(eog) == "" and r.finish == "stop"
    assert text + r.tail() == "Hello there, friend" and r.tokens == ids + [eog]

    r = ReplyText(tok, (), max_tokens=2)
    text = "".join(r.push(t) for t in ids[:2])
    assert r.finish == "length" and text + r.tail() == tok.decode(ids[:2])

    r = ReplyText(tok, [" there"], max_tokens=100)
    pieces = []
    for t in ids:
        pieces.append(r.push(t))
        if r.finish:
            break
    assert r.finish == "stop" and "".join(pieces) == "Hello" and r.tail() == ""
    assert len(r.tokens) < len(ids)  # it ended at the token that completed the stop string

    r = ReplyText(tok, ["friendly"], max_tokens=len(ids))  # "friend" is held back: it may become the stop
    text = "".join(r.push(t) for t in ids)
    assert r.finish == "length" and not text.endswith("friend")
    assert text + r.tail() == "Hello there, friend" and r.finish == "length"




def test_greedy_continuation_matches_llama_cpp(llm):
    """llama.cpp's greedy continuation of the fixture prompt (tests/fixtures/make_logits_fixture.py)."""
    fx = np.load(FIXTURES / "logits_smollm2.npz")
    n_prompt = int(fx["n_prompt"])
    prompt_ids, expected = fx["ids"][:n_prompt].tolist(), fx["ids"][n_prompt:].tolist()
    text = llm.generate(prompt_ids, max_tokens=16, temperature=0)
    got = llm.last_stats.tokens
    # identical until the first near-tie at most; the fixture's own test checks near-ties per position
    assert got[:8] == expected[:8], (got, expected)
    assert text == llm.detokenize(got)


def test_stream_equals_whole_and_stats(llm):
    kwargs = dict(max_tokens=12, temperature=0)
    whole = llm.generate("The capital of France is", **kwargs)
    pieces = list(llm.generate("The capital of France is", stream=True, **kwargs))
    assert "".join(pieces) == whole and len(pieces) > 1
    s = llm.last_stats
    assert s.n_generated == 12 and s.finish_reason == "length" and s.n_prompt == len(llm.tokenize("The capital of France is"))
    assert s.prompt_s > 0 and s.gen_s > 0


# llama.cpp's greedy reply to this chat is "L'Étoile, la Marseillaise, ..." (a near-tie at the first
# token, 24.91 vs 24.56 for "The"); ours with float32 K/V agrees as far as "L'Étoile, la". The next token
# is a near-tie in both programs: " Mar" 2.735 vs " Cit" 2.430 in llama.cpp, " Cit" 2.440 vs " Mar" 2.427
# here (measured with the strict-order RMSNorm); either continuation is a faithful run of this model.
# With K/V in f16 (the default) the first near-tie falls the other way here: "The" 24.64 vs "L" 24.56
# on the native backend (24.20 vs 24.18 on Numba), and the reply is FRANCE_OTHER.
FRANCE_REPLY = "L'Étoile, la"
FRANCE_OTHER = "The capital of France is Paris."


def test_chat_answers_and_stops_at_end_of_turn(llm):
    reply = llm.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=12, temperature=0)
    assert reply == FRANCE_OTHER or (
        reply.startswith(FRANCE_REPLY) and reply.split(FRANCE_REPLY)[1].strip()[:3] in ("Mar", "Cit")
    ), reply
    reply = llm.chat([{"role": "user", "content": "Say hello."}], max_tokens=60, temperature=0)
    assert reply and "<|im_end|>" not in reply
    assert llm.last_stats.finish_reason == "stop"


def test_stop_string_is_not_returned(llm):
    full = llm.generate("1, 2, 3, 4,", max_tokens=12, temperature=0)
    assert " 6," in full
    cut = llm.generate("1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[" 6,"])
    assert full.startswith(cut) and " 6," not in cut and llm.last_stats.finish_reason == "stop"


def test_same_seed_same_text(llm):
    kw = dict(max_tokens=16, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = llm.generate("Once upon a time", seed=42, **kw)
    b = llm.generate("Once upon a time", seed=42, **kw)
    c = llm.generate("Once upon a time", seed=43, **kw)
    assert a == b and a != c


def test_context_limits(llm):
    with pytest.raises(ContextFullError, match="context holds 256"):
        llm.generate(list(range(100, 400)), max_tokens=4)
    ids = llm.tokenize("word " * 120)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm.generate(ids, max_tokens=500, temperature=0)
    assert llm.last_stats.context_full and llm.last_stats.finish_reason == "length"
    assert llm.last_stats.n_prompt + llm.last_stats.n_generated == 257  # the last token needs no cell
    assert any("end of the 256-token context" in str(w.message) for w in caught)


def test_logits_every_position(llm):
    ids = llm.tokenize("Hello world, this is a test.")
    logits = llm.logits(ids)
    assert logits.shape == (len(ids), llm.n_vocab) and logits.dtype.name == "float32"
    with pytest.raises(ContextFullError):
        llm.logits(list(range(300)))


def test_bad_arguments(llm):
    with pytest.raises(EdgeInferError, match="temperature"):
        llm.generate("x", temperature=-1)
    with pytest.raises(EdgeInferError, match="speculative"):
        llm.generate("x", speculative="bogus")
    with pytest.raises(EdgeInferError, match="outside the vocabulary"):
        llm.generate([10**6], max_tokens=2)
    with pytest.raises(EdgeInferError, match="empty"):
        llm.generate([], max_tokens=2)


# -- the command line ---------------------------------------------------------------------------------


def _run(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "edgeinfer", "run", *args], input=stdin, capture_output=True, text=True, timeout=300
    )


def test_cli_one_shot(smollm2_path):
    r = _run(str(smollm2_path), "What is the capital of France?", "--temp", "0", "-n", "12", "--verbose", "-c", "256",
             "--kv-type", "f32")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(FRANCE_REPLY)  # llama.cpp's reply: see FRANCE_OTHER for f16
    assert "tokens/s" in r.stderr and "generation:" in r.stderr and "KV cache: f32" in r.stderr
    r = _run(str(smollm2_path), "Hi", "--kv-type", "q4_0")
    assert r.returncode != 0 and "'f16', 'q8_0', 'f32'" in r.stderr


def test_cli_raw_completion(smollm2_path):
    r = _run(str(smollm2_path), "1, 2, 3, 4,", "--raw", "--temp", "0", "-n", "6", "-c", "128")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" 5, 6")


def test_cli_interactive_session(smollm2_path):
    script = "\n".join([
        "/set temperature 0",
        "/set top_k banana",
        "What is the capital of France?",
        '"""',
        "Say the word",
        "yes",
        '"""',
        "/clear",
        "/show",
        "/bye",
        "never read",
    ]) + "\n"  # fmt: skip
    r = _run(str(smollm2_path), "-n", "20", "-c", "512", stdin=script)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Set temperature to 0.0." in out
    assert "top_k needs an integer" in out
    assert "L'Étoile" in out or FRANCE_OTHER in out  # the near-tie (see FRANCE_REPLY)
    assert "Cleared the conversation." in out and "temperature=0.0" in out
    assert out.count(">>> ") >= 5 and "... " in out


def test_cli_errors(tmp_path):
    r = _run(str(tmp_path / "missing.gguf"), "hi")
    assert r.returncode == 1 and "No such model file" in r.stderr and "Traceback" not in r.stderr
