"""Helpers of the chat-format tests (test_structured, test_harmony, test_gemma4_tools): a byte-level
vocabulary GGUF holding a model family's special tokens and its real chat template, and a reply fed to a
parser in random pieces."""

from __future__ import annotations

import random
from pathlib import Path

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
