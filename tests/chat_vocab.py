"""Helpers of the chat-format tests (test_structured, test_harmony, test_gemma4_tools): a byte-level
vocabulary GGUF holding a model family's special tokens and its real chat template, a reply fed to a
parser in random pieces, and random replies sampled through a plan's grammar."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import numpy as np

from edgeinfer.gguf import GGUFFile
from edgeinfer.tokenizer.base import Tokenizer
from edgeinfer.tokenizer.chat import ChatTemplate


def byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table: token i is byte i."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def special_vocab(path: Path, arch: str, specials: list[str], types: list[int], template: Path,
                  **ids: str) -> tuple[Tokenizer, ChatTemplate]:  # fmt: skip
    """A vocabulary-only GGUF at `path`: every byte a token, one merge, then `specials` with their GGUF
    token types (3 control, 4 user-defined); ids: e.g. eos_token_id="<eos>". Its tokenizer and template."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    tokens = byte_chars() + ["Ġt"] + specials
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "gpt-4o")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", [1] * 257 + types)
    w.add_array("tokenizer.ggml.merges", ["Ġ t"])
    for key, text in ids.items():
        w.add_uint32(f"tokenizer.ggml.{key}", tokens.index(text))
    w.add_string("tokenizer.chat_template", template.read_text())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(str(path))
    tok = Tokenizer.from_gguf(f)
    return tok, ChatTemplate.from_metadata(f.metadata, set(tok.vocab.token_to_id))


def feed_in_pieces(parser, text: str, size: int, rng: random.Random) -> tuple[list, str, str, list[tuple]]:
    """Feeds `text` in pieces of 1..size characters, then finishes: (the deltas, their content, their
    reasoning, the calls they stream as (name, arguments))."""
    deltas, i = [], 0
    while i < len(text):
        n = rng.randint(1, size)
        deltas += parser.feed(text[i : i + n])
        i += n
    deltas += parser.finish()
    calls: dict[int, list] = {}
    for d in deltas:
        if d.tool_call:
            c = calls.setdefault(d.tool_call.index, ["", ""])
            c[0] = d.tool_call.name or c[0]
            c[1] += d.tool_call.arguments
    return (deltas, "".join(d.content for d in deltas), "".join(d.reasoning for d in deltas),
            [tuple(c) for _, c in sorted(calls.items())])  # fmt: skip


def sample_constrained(matcher, tok, rng: np.random.Generator, max_tokens: int, stop: set[int]) -> list[int]:
    """Random logits through the constraint's mask, one token at a time, until it is done or a stop token."""
    ids = []
    for _ in range(max_tokens):
        logits = matcher.mask(rng.standard_normal(tok.n_vocab).astype(np.float32) * 3)
        t = int(np.argmax(logits))
        assert np.isfinite(logits[t])
        ids.append(t)
        if t in stop:
            break
        matcher.consume(t)
        if getattr(matcher, "done", False):
            break
    return ids


def forced_call(plan, tok, seed: int, max_tokens: int, stop: set[int], schemas: dict, choice: str) -> str:
    """One random reply under a plan made with tool_choice "required" or a tool's name: it must parse to
    exactly one call (of that tool when named) and no text, with arguments valid for the tool's schema.
    Returns the tool's name."""
    ids = sample_constrained(plan.grammar.matcher(tok), tok, np.random.default_rng(seed), max_tokens, stop)
    p = plan.parser()
    p.feed(tok.decode(ids))
    p.finish()
    assert len(p.tool_calls) == 1 and p.content == "", tok.decode(ids)
    c = p.tool_calls[0]
    assert choice == "required" or c.name == choice
    jsonschema.validate(json.loads(c.arguments), schemas[c.name])
    return c.name
