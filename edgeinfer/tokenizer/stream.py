"""Streaming detokenization: text for each new token, never half a character."""

from __future__ import annotations

import codecs

from .base import Tokenizer, _clean_spaces


class StreamingDetokenizer:
    """Turns token ids into text one at a time, as they are generated.

    `add(id)` returns the text that became complete with this token: a character split across
    byte-fallback tokens or byte-level BPE tokens comes out whole, once its last byte arrives.
    The concatenation of everything `add` and `flush` return equals `tokenizer.decode(ids, skip_special)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next token is the first of a new text."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        self._pending = b""  # raw bytes held back for clean_spaces, which looks a few bytes ahead

    def add(self, token_id: int) -> str:
        """Text completed by `token_id` (possibly "")."""
        tok = self.tokenizer
        v = tok.vocab
        if self._first:
            self._first = False
            if self.skip_special and v.add_bos and token_id == v.bos_id:
                return ""  # decode() drops a leading BOS and then keeps the next token's space
            piece = tok.token_to_piece(token_id, not self.skip_special)
            if v.add_space_prefix and piece[:1] == b" ":
                piece = piece[1:]
        else:
            piece = tok.token_to_piece(token_id, not self.skip_special)
        if not v.clean_spaces:
            return self._decoder.decode(piece)
        # clean_spaces edits around ' ' and "'": keep the last bytes back while they may still change
        data = self._pending + piece
        cut = len(data)
        while cut > 0 and (data[cut - 1:cut] == b" " or b"'" in data[max(cut - 2, 0):cut]):
            cut -= 1
        self._pending = data[cut:]
        return self._decoder.decode(_clean_spaces(data[:cut]))

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character comes out as U+FFFD)."""
        data = _clean_spaces(self._pending) if self._pending else b""
        self._pending = b""
        return self._decoder.decode(data, final=True)
