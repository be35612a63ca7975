"""The SentencePiece (SPM) encoding core, token for token identical to llama.cpp.

`SPMEncoder.encode` does what llama.cpp's `llm_tokenizer_spm_session::tokenize` (src/llama-vocab.cpp)
does to one raw-text fragment, which the caller has already cut out of the special tokens, prefixed with
' ' when `add_space_prefix` says so and escaped (' ' -> '▁'):

1. split the fragment into characters (llama.cpp: UTF-8 sequences, by the length its lead byte announces;
   for the valid UTF-8 of a Python str these are exactly the code points);
2. seed a priority queue with every adjacent pair whose concatenation is a piece of the vocabulary, any
   piece at all: normal, control, user-defined, unused and byte pieces alike (`text_to_token` looks the
   text up in `token_to_id`, which holds every piece; when a text appears twice the later id wins, as
   `token_to_id[word] = i` makes it), with that piece's score;
3. pop the highest score (ties: the lowest left index), skip it if it went stale (one of its two symbols
   was merged away or grew since), merge, and queue the two new pairs with the neighbours;
4. emit each final symbol: its piece id, or (a single character that is not a piece) one byte-fallback
   token per UTF-8 byte: `<0xNN>` (upper-case hex) if the vocabulary has it, else the one-byte piece.
   llama.cpp's `rev_merge` branch of `resegment` can never run: a symbol is either one character or the
   result of a merge, and a merge only happens when the merged text is a piece, so every multi-character
   symbol is a piece.

Speed. A pure-Python heap over a whole long fragment (tens of thousands of characters) is slow, so `encode`
first cuts the fragment where no piece can span the cut, and encodes (and caches) the chunks one by one.
The cut criterion is exact: every symbol the algorithm ever builds is a single character or a piece, so a
position p (between characters p-1 and p) that no piece occurrence spans is never crossed by a merge;
the pair straddling p is never queued, the two sides never share a queue entry, and since the queue
order (score, then left index) restricted to one side is that side's own order, each side ends exactly
as it would alone. A piece spanning p contains the two characters around p as adjacent characters, so
it suffices that this character pair appears adjacent in no piece. `SPMEncoder` keeps a bitmap of the
hashes of all character pairs adjacent in some piece (collisions only make it keep a safe position
uncut, never cut an unsafe one). English text is cut at nearly every word; the chunks repeat, so a cache
from chunk to ids makes the second pass over similar text cheaper still.

Only where the vocabulary cannot encode a byte at all does this differ from llama.cpp: there llama.cpp's
`byte_to_token` throws (`std::out_of_range`, which takes the process down through the C API); here the
byte becomes `unk_id`, or `ValueError` is raised when there is no unknown token either.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

# llama.cpp's llama_token_type (the values of tokenizer.ggml.token_type)
TOKEN_TYPE_UNDEFINED = 0
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6

ESCAPED_SPACE = "\u2581"  # '▁'

_PAIR_BITS = 22  # the pair bitmap has 2**22 entries (4 MiB); Gemma 3's pieces set ~72,000 of them
_PAIR_K1 = np.uint32(0x9E3779B1)
_PAIR_K2 = np.uint32(0x85EBCA77)
_PAIR_SHIFT = np.uint32(32 - _PAIR_BITS)
_SHORT_TEXT = 48  # below this many characters the chunking costs more than it saves
_CACHE_MAX_CHUNK = 64  # longer chunks are not cached (they rarely come back)
_CACHE_MAX_ENTRIES = 100_000  # the chunk cache is emptied when it reaches this size


def _pair_hash(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Hash of the code-point pairs (left[i], right[i]) into [0, 2**_PAIR_BITS); uint32 arithmetic wraps."""
    return ((left * _PAIR_K1 + right) * _PAIR_K2) >> _PAIR_SHIFT


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class SPMEncoder:
    """llama.cpp's SPM tokenizer session, for one vocabulary.

    `tokens`, `scores` and `token_types` are the GGUF arrays `tokenizer.ggml.tokens`, `.scores` and
    `.token_type`; `unk_id` is `tokenizer.ggml.unknown_token_id` (or None). Build it once per vocabulary:
    it holds a piece -> id map, the scores, the byte-fallback table and the pair bitmap, and a cache of
    encoded chunks. `encode` is safe to call from several threads.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        scores: np.ndarray | None,
        token_types: np.ndarray | None,
        unk_id: int | None,
    ):
        n = len(tokens)
        pieces = tokens if isinstance(tokens, list) else list(tokens)
        if not all(pieces):  # llama.cpp renames an empty piece, which it then matches like any other
            pieces = [p if p else f"[EMPTY_{i}]" for i, p in enumerate(pieces)]
        self.n_tokens = n
        # later ids overwrite earlier ones, like llama.cpp's `token_to_id[word] = i`
        self._ids: dict[str, int] = dict(zip(pieces, range(n)))

        if scores is None:
            score_arr = np.zeros(n, dtype=np.float32)
        else:
            score_arr = np.asarray(scores)
            if score_arr.shape[0] < n:
                raise ValueError(f"{score_arr.shape[0]} scores for {n} tokens")
            # llama.cpp keeps each score as a float (int32 scores are converted); float32 -> Python
            # float is exact, so comparisons below are llama.cpp's comparisons
            score_arr = score_arr[:n].astype(np.float32)
        # the heap is a min-heap: keep the negated scores
        self._neg_scores: list[float] = (-score_arr.astype(np.float64)).tolist()

        if token_types is not None and len(token_types) < n:
            raise ValueError(f"{len(token_types)} token types for {n} tokens")
        self.token_types = token_types
        if unk_id is not None and not 0 <= int(unk_id) < n:
            unk_id = None
        self.unk_id = None if unk_id is None else int(unk_id)

        # byte fallback, as llama_vocab::byte_to_token: "<0xNN>", else the one-byte piece
        byte_ids: list[int | None] = []
        for b in range(256):
            tid = self._ids.get(f"<0x{b:02X}>")
            if tid is None and b < 0x80:
                tid = self._ids.get(chr(b))
            if tid is None:
                tid = self.unk_id
            byte_ids.append(tid)
        self._byte_ids = byte_ids

        # bitmap of the character pairs adjacent inside some piece; joining with NUL only adds pairs
        # (a superset keeps the cuts exact)
        cps = _code_points("\x00".join(pieces))
        pair_filter = np.zeros(1 << _PAIR_BITS, dtype=np.bool_)
        if len(cps) > 1:
            pair_filter[_pair_hash(cps[:-1], cps[1:])] = True
        self._pair_filter = pair_filter

        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """The ids llama.cpp's SPM session gives for `text` (an escaped fragment, see the module doc)."""
        n = len(text)
        if n < _SHORT_TEXT:
            return self._encode_chunk(text) if n else []
        cps = _code_points(text)
        cuts = np.flatnonzero(~self._pair_filter[_pair_hash(cps[:-1], cps[1:])])
        cuts += 1
        bounds = cuts.tolist()
        bounds.append(n)
        cache = self._cache
        get = cache.get
        encode_chunk = self._encode_chunk
        out: list[int] = []
        start = 0
        for stop in bounds:
            chunk = text[start:stop]
            ids = get(chunk)
            if ids is None:
                ids = encode_chunk(chunk)
                if stop - start <= _CACHE_MAX_CHUNK:
                    if len(cache) >= _CACHE_MAX_ENTRIES:
                        cache.clear()
                    cache[chunk] = ids
            out += ids
            start = stop
        return out

    def clear_cache(self) -> None:
        self._cache.clear()

    def _byte_fallback(self, char: str) -> list[int]:
        out = []
        for b in char.encode("utf-8", "surrogatepass"):
            tid = self._byte_ids[b]
            if tid is None:
                raise ValueError(
                    f"the vocabulary has no token for byte 0x{b:02X} (of {char!r}) and no unknown token"
                )
            out.append(tid)
        return out

    def _encode_chunk(self, s: str) -> list[int]:
        """The whole llama.cpp algorithm on `s` (no cutting).

        Symbol i starts at character i; `end[i]` is where it ends (0 once merged into its left
        neighbour), so the next symbol is `end[i]`, and `prev[i]` is the previous one. A queue entry
        (-score, left, mid, stop) is the pair of the symbols [left, mid) and [mid, stop); it is current
        exactly when `end[left] == mid and end[mid] == stop` (llama.cpp's test: neither symbol merged
        away, sizes unchanged).
        """
        n = len(s)
        get = self._ids.get
        if n == 1:
            tid = get(s)
            return [tid] if tid is not None else self._byte_fallback(s)
        neg = self._neg_scores
        heap = []
        for i in range(n - 1):
            tid = get(s[i : i + 2])
            if tid is not None:
                heap.append((neg[tid], i, i + 1, i + 2))
        end = list(range(1, n + 1))
        if heap:
            heapq.heapify(heap)
            prev = list(range(-1, n - 1))
            pop = heapq.heappop
            push = heapq.heappush
            while heap:
                _, left, mid, stop = pop(heap)
                if end[left] != mid or end[mid] != stop:
                    continue
                end[left] = stop
                end[mid] = 0
                if stop < n:
                    prev[stop] = left
                    nxt = end[stop]
                    tid = get(s[left:nxt])
                    if tid is not None:
                        push(heap, (neg[tid], left, stop, nxt))
                p = prev[left]
                if p >= 0:
                    tid = get(s[p:stop])
                    if tid is not None:
                        push(heap, (neg[tid], p, left, stop))
        out: list[int] = []
        i = 0
        while i < n:
            e = end[i]
            tid = get(s[i:e])
            if tid is not None:
                out.append(tid)
            else:  # only a single character can fail to be a piece
                out += self._byte_fallback(s[i:e])
            i = e
        return out


# ---------------------------------------------------------------------- reference


def _encode_reference(encoder: SPMEncoder, text: str) -> list[int]:
    """A slow, literal transcription of llama.cpp's `llm_tokenizer_spm_session::tokenize`, on UTF-8 bytes,
    with its symbol list, priority queue, `rev_merge` map and recursive `resegment`. For tests."""
    data = text.encode("utf-8", "surrogatepass")

    def text_to_token(b: bytes) -> int | None:
        # pieces are str; a symbol is always whole UTF-8 sequences, so decoding is exact
        return encoder._ids.get(b.decode("utf-8", "surrogatepass"))

    # symbols: [prev, next, offset, n]
    symbols: list[list[int]] = []
    offs = 0
    index = 0
    while offs < len(data):
        lead = data[offs]
        length = (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[lead >> 4]
        n = min(length, len(data) - offs)
        offs += n
        symbols.append([index - 1, -1 if offs == len(data) else index + 1, offs - n, n])
        index += 1

    work_queue: list[tuple[float, int, int, int, int]] = []  # (-score, left, seq, right, size)
    rev_merge: dict[bytes, tuple[int, int]] = {}
    seq = [0]

    def sym_text(i: int, n: int) -> bytes:
        return data[symbols[i][2] : symbols[i][2] + n]

    def try_add_bigram(left: int, right: int) -> None:
        if left == -1 or right == -1:
            return
        t = sym_text(left, symbols[left][3] + symbols[right][3])
        token = text_to_token(t)
        if token is None or token >= encoder.n_tokens:
            return
        score = -encoder._neg_scores[token]
        # std::priority_queue top: highest score, then lowest left
        heapq.heappush(work_queue, (-score, left, seq[0], right, len(t)))
        seq[0] += 1
        rev_merge[t] = (left, right)

    for i in range(1, len(symbols)):
        try_add_bigram(i - 1, i)

    while work_queue:
        _, left, _, right, size = heapq.heappop(work_queue)
        ls, rs = symbols[left], symbols[right]
        if ls[3] == 0 or rs[3] == 0 or ls[3] + rs[3] != size:
            continue
        ls[3] += rs[3]
        rs[3] = 0
        ls[1] = rs[1]
        if rs[1] >= 0:
            symbols[rs[1]][0] = left
        try_add_bigram(ls[0], left)
        try_add_bigram(left, ls[1])

    output: list[int] = []

    def resegment(i: int) -> None:
        t = sym_text(i, symbols[i][3])
        token = text_to_token(t)
        if token is not None:
            output.append(token)
            return
        p = rev_merge.get(t)
        if p is None:
            for b in t:
                tid = encoder._byte_ids[b]
                if tid is None:
                    raise ValueError(f"no token for byte 0x{b:02X}")
                output.append(tid)
            return
        resegment(p[0])
        resegment(p[1])

    i = 0 if symbols else -1
    while i != -1:
        resegment(i)
        i = symbols[i][1]
    return output


# ---------------------------------------------------------------------- detokenization


def spm_piece_to_bytes(piece: str, token_type: int) -> bytes:
    """The bytes llama.cpp's `token_to_piece` gives for one SPM piece (with special=True; dropping control
    and unknown pieces when special=False is the caller's business):

    - NORMAL: the piece with '▁' unescaped to ' ', in UTF-8;
    - BYTE (`<0xNN>`): that one byte;
    - USER_DEFINED, CONTROL, UNKNOWN: the piece's text as it is (no unescaping), in UTF-8;
    - UNUSED, UNDEFINED and anything else: nothing (llama.cpp suppresses them).
    """
    token_type = int(token_type)
    if token_type == TOKEN_TYPE_NORMAL:
        return piece.replace(ESCAPED_SPACE, " ").encode("utf-8", "surrogatepass")
    if token_type == TOKEN_TYPE_BYTE:
        # llama.cpp: strtol(text.substr(3, 2), NULL, 16)
        digits = piece[3:5]
        value = 0
        for ch in digits:
            d = int(ch, 16) if ch in "0123456789abcdefABCDEF" else -1
            if d < 0:
                break
            value = value * 16 + d
        return bytes((value & 0xFF,))
    if token_type in (TOKEN_TYPE_USER_DEFINED, TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN):
        return piece.encode("utf-8", "surrogatepass")
    return b""


__all__ = [
    "SPMEncoder",
    "spm_piece_to_bytes",
    "ESCAPED_SPACE",
    "TOKEN_TYPE_UNDEFINED",
    "TOKEN_TYPE_NORMAL",
    "TOKEN_TYPE_UNKNOWN",
    "TOKEN_TYPE_CONTROL",
    "TOKEN_TYPE_USER_DEFINED",
    "TOKEN_TYPE_UNUSED",
    "TOKEN_TYPE_BYTE",
]
