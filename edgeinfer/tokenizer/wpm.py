"""BERT's WordPiece (`tokenizer.ggml.model` 'bert'), as llama.cpp's `llm_tokenizer_wpm_session`.

    words = preprocess(text)        # NFD (first code point of each decomposition), lowercase, accents,
                                    # control characters and U+FFFD dropped; split at whitespace; every
                                    # punctuation mark, ASCII symbol and CJK ideograph is a word of its own
    for each word: "▁" + word cut greedily into the longest vocabulary pieces, byte offset by byte offset
                   (a word with a position no piece starts at becomes the unknown token)

Unicode facts come from llama.cpp's tables (edgeinfer.tokenizer.unicode_data: categories of Unicode 15.1;
lowercase and NFD from Python's unicodedata, one code point each as llama.cpp's tables keep them).
"""

from __future__ import annotations

import unicodedata

from .unicode_data import WHITESPACE, category
from .vocab import Vocab

_ESCAPED_SPACE = "\u2581".encode("utf-8")


def _is_chinese_char(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B920 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)  # fmt: skip


def _nfd_first(cp: int) -> int:
    """unicode_cpts_normalize_nfd: the first code point of the character's canonical decomposition."""
    return ord(unicodedata.normalize("NFD", chr(cp))[0]) if cp >= 0xC0 else cp


def _lower(cp: int) -> int:
    """unicode_tolower: UnicodeData's simple lowercase mapping (one code point)."""
    low = chr(cp).lower()
    return ord(low[0]) if low and low != chr(cp) else cp


class WPMEncoder:
    def __init__(self, vocab: Vocab, lowercase: bool = True, strip_accents: bool = True):
        self.vocab = vocab
        self.lowercase, self.strip_accents = lowercase, strip_accents
        self.piece_to_id: dict[bytes, int] = {}
        for tid, t in enumerate(vocab.tokens):
            self.piece_to_id[t.encode("utf-8", "surrogatepass")] = tid  # a repeated text: its last id
        self.max_len = max((len(b) for b in self.piece_to_id), default=0)
        self.unk_id = vocab.unk_id
        self._char: dict[str, tuple[str, int]] = {}  # char -> (normalized text, kind: 0 drop, 1 space, 2 alone, 3 part)

    def _classify(self, ch: str) -> tuple[str, int]:
        got = self._char.get(ch)
        if got is not None:
            return got
        cp = ord(ch)
        if self.strip_accents:
            cp = _nfd_first(cp)
        cat = category(cp)
        if cp in WHITESPACE:
            got = ("", 1)
        elif cp == 0 or cp == 0xFFFD or cat == "C" or (self.strip_accents and cat == "M"):
            got = ("", 0)
        else:
            s = chr(_lower(cp) if self.lowercase else cp)
            alone = cat == "P" or (cp < 0x7F and cat == "S") or _is_chinese_char(cp)
            got = (s, 2 if alone else 3)
        self._char[ch] = got
        return got

    def words(self, text: str) -> list[str]:
        words, cur = [], []
        for ch in text:
            s, kind = self._classify(ch)
            if kind == 3:
                cur.append(s)
            elif kind == 1:
                if cur:
                    words.append("".join(cur))
                    cur = []
            elif kind == 2:
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(s)
        if cur:
            words.append("".join(cur))
        return words

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        pieces, max_len = self.piece_to_id, self.max_len
        for word in self.words(text):
            w = _ESCAPED_SPACE + word.encode("utf-8", "surrogatepass")
            n, start, i = len(w), len(out), 0
            while i < n:
                for j in range(min(n, i + max_len + 1), i, -1):
                    tid = pieces.get(w[i:j])
                    if tid is not None:
                        out.append(tid)
                        i = j
                        break
                else:  # no piece starts here: the whole word is unknown
                    del out[start:]
                    break
            if len(out) == start and self.unk_id is not None:
                out.append(self.unk_id)
        return out
