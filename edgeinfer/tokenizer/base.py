"""`Tokenizer`: text <-> token ids for a GGUF vocabulary, token for token as llama.cpp.

encode = llama.cpp's `llama_vocab::impl::tokenize`: cut the special tokens out of the text
(`tokenizer_st_partition`), then run each remaining fragment through the BPE or SPM core, with BOS/EOS
as the file asks. decode = `llama_detokenize` (and `common_detokenize`'s use of it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ..errors import TokenizerError
from .bpe import UNICODE_TO_BYTE, BPEEncoder
from .vocab import TokenAttr, Vocab

_ATTR_CONTROL = int(TokenAttr.CONTROL)
_ATTR_UNKNOWN = int(TokenAttr.UNKNOWN)
_ATTR_USER_DEFINED = int(TokenAttr.USER_DEFINED)
_ATTR_NORMAL = int(TokenAttr.NORMAL)
_ATTR_BYTE = int(TokenAttr.BYTE)
_ATTR_LSTRIP = int(TokenAttr.LSTRIP)
_ATTR_RSTRIP = int(TokenAttr.RSTRIP)
_C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale
_FRAGMENT_CACHE_MAX_LEN = 256
_FRAGMENT_CACHE_SIZE = 1 << 16


class _SpecialMatcher:
    """Finds which special tokens occur in a text, fast even for thousands of them.

    Special tokens are grouped by first character. For a first character that is rare in the text we
    look up the substrings at each of its occurrences (one dict lookup per token length); for a
    frequent one we search the text for each token of the group. Both give the exact set.
    """

    def __init__(self, texts: Iterable[str]):
        groups: dict[str, set[str]] = {}
        for t in texts:
            groups.setdefault(t[0], set()).add(t)
        self.groups = {c: (g, sorted({len(t) for t in g})) for c, g in groups.items()}

    def present(self, text: str) -> set[str]:
        found: set[str] = set()
        for c, (group, lengths) in self.groups.items():
            n_occ = text.count(c)
            if not n_occ:
                continue
            if n_occ * len(lengths) * 100 < len(group) * len(text):
                p = text.find(c)
                while p >= 0:
                    for n in lengths:
                        piece = text[p:p + n]
                        if piece in group:
                            found.add(piece)
                    p = text.find(c, p + 1)
            else:
                found.update(t for t in group if t in text)
        return found


def _clean_spaces(data: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces passes (llama_detokenize with clean_spaces)."""
    data = re.sub(rb" (?=[?!.,])", b"", data)
    data = re.sub(rb" ' ", b"'", data)
    return re.sub(rb" (?='[sm]|'re|'ve)", b"", data)


class Tokenizer:
    """Tokenizer of one GGUF vocabulary: BPE (`tokenizer.ggml.model` 'gpt2') or SPM ('llama')."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._wpm = None
        if vocab.is_spm:
            from .spm import SPMEncoder
            self._spm = SPMEncoder(vocab.tokens, vocab.scores, vocab.token_types, vocab.unk_id)
            self._bpe = None
        elif vocab.model == "bert":
            from .wpm import WPMEncoder
            self._spm = self._bpe = None
            self._wpm = WPMEncoder(vocab, vocab.normalizer_lowercase, vocab.normalizer_strip_accents)
        else:
            self._spm = None
            self._bpe = BPEEncoder(vocab)
        tokens, attrs = vocab.tokens, vocab.attrs
        self._specials = [(tid, tokens[tid], int(attrs[tid])) for tid in vocab.special_ids]
        self._matchers: dict[bool, _SpecialMatcher] = {}
        self._pieces: dict[int, bytes] = {}
        self._fragment_cache: dict[str, list[int]] = {}
        if self._bpe is not None:
            ids = self.encode("\n", add_special=False)
            vocab.nl_id = ids[0] if ids else vocab.pad_id

    @classmethod
    def from_gguf(cls, gguf_file) -> Tokenizer:
        """The tokenizer of an open `GGUFFile` (its `tokenizer.ggml.*` metadata)."""
        return cls(Vocab.from_gguf(gguf_file))

    # ------------------------------------------------------------------ properties

    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def bos_id(self) -> int | None:
        return self.vocab.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.vocab.eos_id

    @property
    def eog_ids(self) -> frozenset[int]:
        return self.vocab.eog_ids

    def token_text(self, token_id: int) -> str:
        """The vocabulary's raw text of a token (`<|im_end|>`, `▁the`, `Ġthe`, `<0x0A>`)."""
        return self.vocab.tokens[token_id]

    def is_eog(self, token_id: int) -> bool:
        """True for tokens that end generation (EOS, EOT, `<|im_end|>`, `<end_of_turn>`, ...)."""
        return token_id in self.vocab.eog_ids

    # ------------------------------------------------------------------ encode

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`.

        add_special: add BOS/EOS where the file asks for them (tokenizer.ggml.add_bos_token, ...).
        parse_special: turn the text of control tokens (`<|im_start|>`, `<start_of_turn>`) into those
        tokens; user-defined tokens are always recognised, as in llama.cpp.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        v = self.vocab
        out: list[int] = []
        if add_special and v.add_bos:
            if v.bos_id is None:
                raise TokenizerError("the vocabulary asks for BOS but has no BOS token")
            out.append(v.bos_id)
        fragments = self._partition(text, parse_special) if text else []
        if self._spm is not None:
            prev_special = True  # a leading space goes before the first fragment, as after a special
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if v.add_space_prefix and prev_special:
                    frag = " " + frag
                out.extend(self._spm_encode(frag.replace(" ", "\u2581")))
                prev_special = False
        else:
            encoder = self._bpe if self._bpe is not None else self._wpm
            escape = self._bpe is not None and v.escape_whitespaces  # Gemma 4: spaces are "▁" before BPE
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    out.extend(encoder.encode(frag.replace(" ", "\u2581") if escape else frag))
        if add_special and v.add_sep and self._wpm is not None:  # BERT: [CLS] ... [SEP]
            if v.sep_id is None:
                raise TokenizerError("the vocabulary asks for SEP but has no SEP token")
            out.append(v.sep_id)
        if add_special and v.add_eos:
            if v.eos_id is None:
                raise TokenizerError("the vocabulary asks for EOS but has no EOS token")
            out.append(v.eos_id)
        return out

    def _spm_encode(self, fragment: str) -> list[int]:
        """SPM ids of an escaped fragment; short fragments (lines between newline tokens, chat turns)
        are cached here, long ones are cut into cached chunks by the SPM encoder itself."""
        if len(fragment) > _FRAGMENT_CACHE_MAX_LEN:
            return self._spm.encode(fragment)
        ids = self._fragment_cache.get(fragment)
        if ids is None:
            ids = self._spm.encode(fragment)
            if len(self._fragment_cache) >= _FRAGMENT_CACHE_SIZE:
                self._fragment_cache.clear()
            self._fragment_cache[fragment] = ids
        return ids

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split `text` into raw-text fragments and special token ids, as `tokenizer_st_partition`:
        special tokens longest first, each cut out of every text fragment left so far."""
        matcher = self._matchers.get(parse_special)
        if matcher is None:
            matcher = _SpecialMatcher(t for _, t, a in self._specials
                                      if parse_special or not a & (_ATTR_CONTROL | _ATTR_UNKNOWN))
            self._matchers[parse_special] = matcher
        present = matcher.present(text)
        if not present:
            return [text]
        frags: list[tuple[int, int] | int] = [(0, len(text))]
        for tid, tok, attr in self._specials:
            if tok not in present:
                continue
            if not parse_special and attr & (_ATTR_CONTROL | _ATTR_UNKNOWN):
                continue
            n = len(tok)
            new: list[tuple[int, int] | int] = []
            for frag in frags:
                if isinstance(frag, int):
                    new.append(frag)
                    continue
                start, end = frag
                while True:
                    pos = text.find(tok, start, end)
                    if pos < 0:
                        new.append((start, end))
                        break
                    left_end = pos
                    if attr & _ATTR_LSTRIP:
                        while left_end > start and text[left_end - 1] in _C_SPACE:
                            left_end -= 1
                    if left_end > start:
                        new.append((start, left_end))
                    new.append(tid)
                    start = pos + n
                    if attr & _ATTR_RSTRIP:
                        while start < end and text[start] in _C_SPACE:
                            start += 1
                    if start >= end:
                        break
            frags = new
        return [f if isinstance(f, int) else text[f[0]:f[1]] for f in frags]

    # ------------------------------------------------------------------ decode

    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        """The bytes of one token, as llama.cpp's `llama_token_to_piece` (lstrip 0).

        special: render control and unknown tokens as their text; when False they give b"".
        """
        v = self.vocab
        if not 0 <= token_id < v.n_vocab:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{v.n_vocab - 1})")
        attr = int(v.attrs[token_id])
        if not special and attr & (_ATTR_CONTROL | _ATTR_UNKNOWN):
            return b""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._piece(token_id, attr)
            self._pieces[token_id] = piece
        return piece

    def _piece(self, token_id: int, attr: int) -> bytes:
        text = self.vocab.tokens[token_id]
        if attr & (_ATTR_CONTROL | _ATTR_UNKNOWN | _ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if attr & _ATTR_NORMAL:
            if self.vocab.is_spm or self.vocab.escape_whitespaces:
                return text.replace("\u2581", " ").encode("utf-8")
            out = bytearray()
            for c in text:
                b = UNICODE_TO_BYTE.get(c)
                if b is None:  # llama.cpp writes the char's bytes in hex, then the whole token
                    out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
                else:
                    out.append(b)
            return bytes(out)
        if attr & _ATTR_BYTE:
            return bytes([_hex_byte(text)])
        return b""

    def decode_bytes(self, ids: Sequence[int], skip_special: bool = False) -> bytes:
        """The bytes of `ids`, as `llama_detokenize(remove_special=skip_special, unparse_special=not skip_special)`."""
        v = self.vocab
        ids = list(ids)
        remove_space = v.add_space_prefix
        if skip_special and v.add_bos and ids and ids[0] == v.bos_id:
            remove_space = False
            ids = ids[1:]
        if skip_special and v.add_eos and ids and ids[-1] == v.eos_id:
            ids = ids[:-1]
        parts = [self.token_to_piece(t, not skip_special) for t in ids]
        if remove_space and parts and parts[0][:1] == b" ":
            parts[0] = parts[0][1:]
        data = b"".join(parts)
        if v.clean_spaces:
            data = _clean_spaces(data)
        return data

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of `ids`. skip_special drops control tokens and a leading BOS / trailing EOS.
        Bytes that do not form valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")


def _hex_byte(text: str) -> int:
    """strtol(text.substr(3, 2), NULL, 16) for a `<0xNN>` piece."""
    value = 0
    for ch in text[3:5]:
        if ch not in "0123456789abcdefABCDEF":
            break
        value = value * 16 + int(ch, 16)
    return value & 0xFF
