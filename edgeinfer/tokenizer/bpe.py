"""GPT-2 style byte-level BPE, merge for merge as llama.cpp's `llm_tokenizer_bpe_session`."""

from __future__ import annotations

import heapq

from .byte_level import BYTE_TO_UNICODE, UNICODE_TO_BYTE, byte_decode, byte_encode  # noqa: F401  (re-exported)
from .pretokenize import PreTokenizer
from .vocab import Vocab


class BPEEncoder:
    """Words -> token ids for one BPE vocabulary, with a per-word cache."""

    def __init__(self, vocab: Vocab, cache_size: int = 1 << 16):
        self.vocab = vocab
        self.pre = PreTokenizer(vocab.pre)
        self.ranks = vocab.bpe_ranks
        self.token_to_id = vocab.token_to_id
        self.cache: dict[str, list[int]] = {}
        self.cache_size = cache_size
        # Gemma 4: merges run on the UTF-8 characters themselves, raw bytes are <0xNN> tokens
        self.byte_encode = vocab.pre != "gemma4"

    def encode(self, text: str) -> list[int]:
        """Token ids of a text fragment (no special tokens in it)."""
        out: list[int] = []
        cache = self.cache
        for word in self.pre.split(text):
            ids = cache.get(word)
            if ids is None:
                if self.byte_encode:
                    ids = self.encode_word(byte_encode(word))
                elif not word.strip("\n") and word in self.token_to_id:  # a run of newlines that is a token
                    ids = [self.token_to_id[word]]
                else:
                    ids = self.encode_word(word)
                if len(cache) >= self.cache_size:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)
        return out

    def encode_word(self, word: str) -> list[int]:
        """Token ids of one byte-encoded word: merge the lowest-ranked adjacent pair, leftmost first."""
        token_to_id = self.token_to_id
        if self.vocab.ignore_merges and word in token_to_id:
            return [token_to_id[word]]
        if len(word) == 1:
            return self._lookup(word)
        ranks = self.ranks
        syms = list(word)                      # symbol texts; "" once merged into its left neighbour
        nxt = list(range(1, len(syms))) + [-1]
        prv = list(range(-1, len(syms) - 1))
        queue: list[tuple[int, int, int, str]] = []  # (rank, left index, right index, merged text)

        def push(left: int, right: int) -> None:
            if left >= 0 and right >= 0:
                rank = ranks.get((syms[left], syms[right]))
                if rank is not None:
                    heapq.heappush(queue, (rank, left, right, syms[left] + syms[right]))

        for i in range(len(syms) - 1):
            push(i, i + 1)
        while queue:
            _, left, right, text = heapq.heappop(queue)
            if not syms[left] or not syms[right] or syms[left] + syms[right] != text:
                continue  # outdated: one side has changed since this pair was queued
            syms[left], syms[right] = text, ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])
        out: list[int] = []
        for s in syms:
            if s:
                out.extend(self._lookup(s))
        return out

    def _lookup(self, symbol: str) -> list[int]:
        tid = self.token_to_id.get(symbol)
        if tid is not None:
            return [tid]
        # llama.cpp falls back to the tokens of the symbol's single bytes; a byte that is not a
        # character of its own (>= 0x80) has none and is dropped (Gemma 4: the <0xNN> tokens)
        out = []
        if not self.byte_encode:
            for b in symbol.encode("utf-8", "surrogatepass"):
                tid = self.token_to_id.get(f"<0x{b:02X}>")
                if tid is not None:
                    out.append(tid)
            return out
        for b in symbol.encode("utf-8", "surrogatepass"):
            tid = self.token_to_id.get(chr(b)) if b < 0x80 else None
            if tid is not None:
                out.append(tid)
        return out
