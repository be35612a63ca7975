"""The SPM encoding core (edgeinfer/tokenizer/spm.py) against llama.cpp and against a literal reference.

tests/fixtures/spm_llamacpp.json holds (fragment, ids) pairs that llama.cpp (llama-cpp-python 0.3.36,
`Llama(gemma3-270m-q4_k_m.gguf, vocab_only=True).tokenize(text, add_bos=False, special=False)`) gave for
texts holding no user-defined piece, so that its special-token partition left each text whole and its SPM
session saw exactly `fragment` (the text with ' ' escaped to '▁'; Gemma 3 adds no space prefix). It was
made by tests/fixtures/make_spm_fixture.py (dev-only, needs llama-cpp-python); it covers Korean, Chinese,
Japanese, emoji and rare characters (byte fallback), accents and combining marks, code, digits, runs of
escaped spaces, piece-like texts ("<0x41>", "<eos>"), a 1,500-word English text and 200 random mixtures.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.gguf import GGUFFile
from edgeinfer.tokenizer.spm import (
    TOKEN_TYPE_BYTE,
    TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_UNUSED,
    TOKEN_TYPE_USER_DEFINED,
    SPMEncoder,
    _encode_reference,
    spm_piece_to_bytes,
)

FIXTURE = Path(__file__).parent / "fixtures" / "spm_llamacpp.json"


@pytest.fixture(scope="module")
def gemma_vocab(gemma3_path):
    meta = GGUFFile(gemma3_path).metadata
    return (
        meta["tokenizer.ggml.tokens"],
        meta["tokenizer.ggml.scores"],
        meta["tokenizer.ggml.token_type"],
        meta.get("tokenizer.ggml.unknown_token_id"),
    )


@pytest.fixture(scope="module")
def gemma(gemma_vocab):
    return SPMEncoder(*gemma_vocab)


@pytest.fixture(scope="module")
def cases():
    return json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]


# ---------------------------------------------------------------------- llama.cpp agreement


def test_fixture_covers_what_it_claims(cases, gemma_vocab):
    names = {c["name"] for c in cases}
    for name in ("korean", "chinese", "emoji", "rare_chars", "accents", "code", "digits", "escaped_runs",
                 "long_english"):
        assert name in names
    assert sum(n.startswith("random_") for n in names) >= 100
    by_name = {c["name"]: c for c in cases}
    tokens, _, types, _ = gemma_vocab
    # byte fallback really happens, and escaped-space runs really are in a fragment
    assert any(types[i] == TOKEN_TYPE_BYTE for i in by_name["emoji"]["ids"])
    assert any(types[i] == TOKEN_TYPE_BYTE for i in by_name["rare_chars"]["ids"])
    assert "▁▁▁" in by_name["escaped_runs"]["fragment"]
    assert len(by_name["long_english"]["fragment"]) > 5000


def test_matches_llamacpp(gemma, cases):
    wrong = [c["name"] for c in cases if gemma.encode(c["fragment"]) != c["ids"]]
    assert not wrong, f"differs from llama.cpp on {wrong}"


def test_matches_llamacpp_without_chunking(gemma, cases):
    # the core alone, on whole fragments (no cutting, no cache)
    wrong = [c["name"] for c in cases if gemma._encode_chunk(c["fragment"]) != c["ids"]]
    assert not wrong


def test_reference_matches_llamacpp(gemma, cases):
    wrong = [c["name"] for c in cases if _encode_reference(gemma, c["fragment"]) != c["ids"]]
    assert not wrong


def test_cache_gives_the_same_ids(gemma, cases):
    gemma.clear_cache()
    first = [gemma.encode(c["fragment"]) for c in cases]
    second = [gemma.encode(c["fragment"]) for c in cases]
    assert first == second == [c["ids"] for c in cases]
    # results handed out are fresh lists: mutating one leaves the cache alone
    long = next(c for c in cases if c["name"] == "long_english")
    got = gemma.encode(long["fragment"])
    got.clear()
    assert gemma.encode(long["fragment"]) == long["ids"]


def test_empty(gemma):
    assert gemma.encode("") == []


def test_pieces_decode_back_to_the_text(gemma_vocab, cases):
    tokens, _, types, _ = gemma_vocab
    for c in cases:
        text = b"".join(spm_piece_to_bytes(tokens[i], types[i]) for i in c["ids"])
        assert text == c["fragment"].replace("▁", " ").encode("utf-8"), c["name"]


# ---------------------------------------------------------------------- fast path vs reference


def _random_text(rng: random.Random, pieces: list[str], alphabet: str, n_parts: int) -> str:
    parts = []
    for _ in range(n_parts):
        if rng.random() < 0.6:
            parts.append(rng.choice(pieces))
        else:
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))))
    return "".join(parts)


def test_random_gemma_texts_match_reference(gemma, gemma_vocab):
    tokens = gemma_vocab[0]
    rng = random.Random(20240601)
    pieces = [t for t in rng.sample(tokens, 20000) if t]
    alphabet = "ab▁▁▁ .,!?0123456789éü안녕我们ひら😀🫠𠀋\x01<>/"
    for _ in range(250):
        text = _random_text(rng, pieces, alphabet, rng.randint(1, 60))
        if rng.random() < 0.1:
            gemma.clear_cache()
        assert gemma.encode(text) == _encode_reference(gemma, text), repr(text)


def _synthetic_vocab(rng: random.Random, alphabet: str, n_pieces: int, score_levels: int):
    """A small random vocabulary: the single characters, byte pieces for some bytes, and random
    multi-character pieces with scores from a few levels (many ties), a duplicate and an empty piece."""
    tokens = ["<unk>", "<s>", "</s>"]
    tokens += [f"<0x{b:02X}>" for b in range(256) if rng.random() < 0.7]
    tokens += [c for c in alphabet if rng.random() < 0.8]
    while len(tokens) < n_pieces:
        length = rng.randint(2, 6)
        tokens.append("".join(rng.choice(alphabet) for _ in range(length)))
    tokens.append(tokens[-5])  # a duplicate: the later id wins
    tokens.append("")  # llama.cpp calls it "[EMPTY_<id>]"
    scores = np.array([float(rng.randint(-score_levels, 0)) for _ in tokens], dtype=np.float32)
    types = np.array([TOKEN_TYPE_BYTE if t.startswith("<0x") else TOKEN_TYPE_NORMAL for t in tokens],
                     dtype=np.int32)
    return tokens, scores, types


@pytest.mark.parametrize("seed", range(6))
def test_random_synthetic_vocab_matches_reference(seed):
    rng = random.Random(seed)
    alphabet = "abcd▁xé😀"[: 4 + seed % 5]
    tokens, scores, types = _synthetic_vocab(rng, alphabet, 40 + 60 * seed, score_levels=1 + seed)
    enc = SPMEncoder(tokens, scores, types, unk_id=0)
    pieces = [t for t in tokens if t and not t.startswith("<")]
    for _ in range(150):
        text = _random_text(rng, pieces, alphabet + "z", rng.randint(1, 80))
        assert enc.encode(text) == _encode_reference(enc, text), repr(text)
        assert enc._encode_chunk(text) == _encode_reference(enc, text), repr(text)


def test_ties_go_to_the_leftmost_pair():
    # "ab" and "bc" score the same: in "abc" the left pair merges first
    enc = SPMEncoder(["a", "b", "c", "ab", "bc"], np.zeros(5, np.float32), None, None)
    assert enc.encode("abc") == [3, 2]
    # a higher score wins regardless of position
    enc = SPMEncoder(["a", "b", "c", "ab", "bc"], np.array([0, 0, 0, -2, -1], np.float32), None, None)
    assert enc.encode("abc") == [0, 4]


def test_piece_not_reachable_by_merges_is_not_produced():
    # "abc" is a piece but neither "ab" nor "bc" is: SPM never forms it
    enc = SPMEncoder(["a", "b", "c", "abc"], np.zeros(4, np.float32), None, None)
    assert enc.encode("abc") == [0, 1, 2]


def test_any_piece_type_takes_part_in_merges():
    # llama.cpp's text_to_token sees control and byte pieces too
    tokens = ["<", "x", ">", "<x", "<x>"]
    types = np.array([TOKEN_TYPE_NORMAL] * 4 + [TOKEN_TYPE_CONTROL], np.int32)
    enc = SPMEncoder(tokens, np.zeros(5, np.float32), types, None)
    assert enc.encode("<x>") == [4]


def test_duplicate_piece_last_id_wins():
    enc = SPMEncoder(["a", "b", "ab", "ab"], np.array([0, 0, -5, -1], np.float32), None, None)
    assert enc.encode("ab") == [3]


def test_byte_fallback_order_and_unknown():
    # "<0xNN>" first, then the one-byte piece, then (where llama.cpp would throw) the unknown token
    tokens = ["<unk>", "<0xC3>", "A", "<0x41>"]
    enc = SPMEncoder(tokens, np.zeros(4, np.float32), None, unk_id=0)
    assert enc.encode("é") == [1, 0]  # 0xC3 0xA9
    assert enc.encode("A") == [2]  # the piece itself
    assert enc.encode("\x01") == [0]
    enc = SPMEncoder(["B", "<0x41>"], np.zeros(2, np.float32), None, unk_id=None)
    with pytest.raises(ValueError, match="no token for byte"):
        enc.encode("é")
    tokens = ["z", "A"]
    enc = SPMEncoder(tokens, np.zeros(2, np.float32), None, unk_id=None)
    assert enc._byte_ids[0x41] == 1  # no "<0x41>": the one-byte piece


def test_empty_piece_is_renamed_like_llamacpp():
    enc = SPMEncoder(["[", "E", "[EMPTY_3]", ""], np.zeros(4, np.float32), None, None)
    assert enc.encode("[E") == [0, 1]
    assert "" not in enc._ids and enc._ids["[EMPTY_3]"] == 3


def test_integer_scores_and_missing_scores():
    enc = SPMEncoder(["a", "b", "ab"], np.array([0, 0, -3], np.int32), None, None)
    assert enc.encode("ab") == [2]
    enc = SPMEncoder(["a", "b", "ab"], None, None, None)
    assert enc.encode("ab") == [2]


# ---------------------------------------------------------------------- detokenization helper


def test_spm_piece_to_bytes():
    assert spm_piece_to_bytes("▁", TOKEN_TYPE_NORMAL) == b" "
    assert spm_piece_to_bytes("▁héllo▁", TOKEN_TYPE_NORMAL) == " héllo ".encode()
    assert spm_piece_to_bytes("<0x0A>", TOKEN_TYPE_BYTE) == b"\n"
    assert spm_piece_to_bytes("<0xFF>", np.int32(TOKEN_TYPE_BYTE)) == b"\xff"
    assert spm_piece_to_bytes("<0xe9>", TOKEN_TYPE_BYTE) == b"\xe9"
    assert spm_piece_to_bytes("<start_of_turn>", TOKEN_TYPE_CONTROL) == b"<start_of_turn>"
    assert spm_piece_to_bytes("  ", TOKEN_TYPE_USER_DEFINED) == b"  "
    assert spm_piece_to_bytes("<unused3>", TOKEN_TYPE_UNUSED) == b""


# ---------------------------------------------------------------------- speed


def test_speed_gemma(gemma_vocab, cases):
    """10,000 words (about 60,000 characters) as one fragment, on Gemma 3's 262,144 pieces. The bounds
    are loose (shared CI machines); typical figures on a 2-core box: constructor 0.2 s, first encode
    0.03 s, warm 0.006 s."""
    t0 = time.perf_counter()
    enc = SPMEncoder(*gemma_vocab)
    t_ctor = time.perf_counter() - t0
    words = next(c for c in cases if c["name"] == "long_english")["fragment"].split("▁")
    rng = random.Random(7)
    text = "▁".join(rng.choice(words) for _ in range(10_000))
    t0 = time.perf_counter()
    first = enc.encode(text)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = enc.encode(text)
    t_warm = time.perf_counter() - t0
    assert first == warm
    assert t_ctor < 1.5, t_ctor
    assert t_first < 1.0, t_first
    assert t_warm < 0.5, t_warm
