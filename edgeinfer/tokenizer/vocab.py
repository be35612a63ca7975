"""The vocabulary of a GGUF file, read the way llama.cpp's `llama_vocab::impl::load` reads it.

Everything the tokenizers need and nothing they compute: token texts, scores, types and llama.cpp's
per-token attributes, the special ids with llama.cpp's defaults per tokenizer model, the flags
(add_bos, add_space_prefix, ...), the end-of-generation set and the special-token cache that
`tokenizer_st_partition` walks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

import numpy as np

from ..errors import TokenizerError
from ..gguf import typed
from .byte_level import BYTE_TO_UNICODE
from .pretokenize import resolve_pre


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values (LLAMA_TOKEN_TYPE_*)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class TokenAttr(IntFlag):
    """llama.cpp's per-token attributes (LLAMA_TOKEN_ATTR_*), derived from the token types."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


_TYPE_TO_ATTR = np.array(
    [TokenAttr.UNDEFINED, TokenAttr.NORMAL, TokenAttr.UNKNOWN, TokenAttr.CONTROL,
     TokenAttr.USER_DEFINED, TokenAttr.UNUSED, TokenAttr.BYTE], dtype=np.int32)

# Tokenizer models this package can run, as `tokenizer.ggml.model` names them.
SUPPORTED_MODELS = ("llama", "gpt2", "gemma4", "bert")

# Token texts llama.cpp recognises as special when the file does not name them (llama-vocab.cpp).
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
_FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
_FIM_SEP_TEXTS = ("<|file_sep|>",)
_FIM_OTHER_TEXTS = (  # pre, suf, mid: detected (and made CONTROL) but not end-of-generation
    ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
     "<|prefix|>"),
    ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>",
     "<|suffix|>"),
    ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
     "<|middle|>"),
)
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss

_KEY = "tokenizer.ggml."


@dataclass(eq=False)
class Vocab:
    """A GGUF vocabulary. Ids are ints; `None` means "this vocabulary has no such token"."""

    model: str                      # tokenizer.ggml.model: "llama" (SPM) or "gpt2" (BPE)
    pre: str                        # tokenizer.ggml.pre as resolved by llama.cpp ("default" when absent)
    tokens: list[str]               # (n_vocab,) token texts
    scores: np.ndarray              # (n_vocab,) float32
    token_types: np.ndarray         # (n_vocab,) int32, TokenType
    attrs: np.ndarray               # (n_vocab,) int32, TokenAttr bits as llama.cpp sets them
    token_to_id: dict[str, int]
    bpe_ranks: dict[tuple[str, str], int]
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    eom_id: int | None = None
    unk_id: int | None = None
    sep_id: int | None = None
    pad_id: int | None = None
    mask_id: int | None = None
    nl_id: int | None = None
    fim_ids: dict[str, int | None] = field(default_factory=dict)  # pre, suf, mid, pad, rep, sep
    add_bos: bool = False
    add_eos: bool = False
    add_sep: bool = False
    add_space_prefix: bool = False
    remove_extra_whitespaces: bool = False
    escape_whitespaces: bool = True
    ignore_merges: bool = False
    clean_spaces: bool = False      # clean_up_tokenization_spaces when detokenizing
    normalizer_lowercase: bool = True       # WordPiece (BERT): lowercase, strip accents
    normalizer_strip_accents: bool = True
    eog_ids: frozenset[int] = frozenset()
    special_ids: list[int] = field(default_factory=list)  # llama.cpp's cache_special_tokens order

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def is_spm(self) -> bool:
        return self.model == "llama"

    @property
    def byte_tokens(self) -> bool:
        """Whether raw bytes are the `<0xNN>` tokens (SPM, Gemma 4's BPE) rather than GPT-2's byte
        characters."""
        return self.model == "llama" or self.pre == "gemma4"

    def attr(self, token_id: int) -> TokenAttr:
        return TokenAttr(int(self.attrs[token_id]))

    def byte_to_token(self, byte: int) -> int:
        """The token of one raw byte, as llama.cpp's `byte_to_token`."""
        if self.byte_tokens:
            tid = self.token_to_id.get(f"<0x{byte:02X}>")
            if tid is None:
                tid = self.token_to_id.get(chr(byte)) if byte < 0x80 else None
        else:
            tid = self.token_to_id.get(BYTE_TO_UNICODE[byte])
        if tid is None:
            raise TokenizerError(f"the vocabulary has no token for byte 0x{byte:02X}; the file is incomplete")
        return tid

    @classmethod
    def from_gguf(cls, gguf_file) -> Vocab:
        """Read the vocabulary of an open `GGUFFile` (or anything with a `.metadata` dict)."""
        meta = gguf_file.metadata if hasattr(gguf_file, "metadata") else gguf_file
        return _build(meta)


def _build(meta) -> Vocab:
    model = meta.get(_KEY + "model")
    if model is not None:
        model = typed.as_str(_KEY + "model", model, error=TokenizerError)
    if model is None:
        raise TokenizerError("the file has no tokenizer (tokenizer.ggml.model is missing); "
                             "edgeinfer needs a GGUF with its vocabulary")
    if model not in SUPPORTED_MODELS:
        raise TokenizerError(f"tokenizer model {model!r} is not supported (supported: "
                             f"{', '.join(SUPPORTED_MODELS)}: 'llama' = SentencePiece, 'gpt2' = byte-level BPE, "
                             "'gemma4' = BPE on UTF-8 with SentencePiece-style spaces, 'bert' = WordPiece)")
    tokens = meta.get(_KEY + "tokens")
    if tokens is None:
        raise TokenizerError("the file has no token list (tokenizer.ggml.tokens); it cannot be tokenized")
    tokens = typed.as_str_list(_KEY + "tokens", tokens, error=TokenizerError)
    n = len(tokens)
    for i, t in enumerate(tokens):
        if not t:  # llama.cpp renames empty tokens so that they stay unique
            tokens[i] = f"[EMPTY_{i}]"

    scores = _array(meta, "scores", n, np.float32, 0.0)
    types = _array(meta, "token_type", n, np.int32, None)
    if types is None:
        attrs = np.full(n, TokenAttr.NORMAL, dtype=np.int32)
        types = np.full(n, TokenType.NORMAL, dtype=np.int32)
    else:
        attrs = _TYPE_TO_ATTR[np.clip(types, 0, 6)].astype(np.int32)
        attrs[(types < 0) | (types > 6)] = TokenAttr.UNDEFINED

    token_to_id = dict(zip(tokens, range(n)))  # a repeated text maps to its last id, as in llama.cpp
    is_spm = model == "llama"

    # llama.cpp's defaults per tokenizer model, then whatever the file says
    if is_spm:
        ids = dict(bos=1, eos=2, unk=0, sep=None, pad=None, mask=None)
        pre, flags = "default", dict(add_space_prefix=True, clean_spaces=False, ignore_merges=False)
        add_bos, add_eos, escape_ws = True, False, True
        bpe_ranks: dict[tuple[str, str], int] = {}
    elif model == "bert":  # WordPiece: llama.cpp's LLAMA_VOCAB_TYPE_WPM defaults
        ids = dict(bos=101, eos=None, unk=100, sep=102, pad=0, mask=103)
        pre, flags = "default", dict(add_space_prefix=False, clean_spaces=True, ignore_merges=False)
        add_bos, add_eos, escape_ws = True, False, True
        bpe_ranks = {}
    else:
        ids = dict(bos=11, eos=11, unk=None, sep=None, pad=None, mask=None)
        if model == "gemma4":  # BPE on raw UTF-8 with "▁" for spaces; no default special ids
            ids = dict.fromkeys(ids)
        merges = meta.get(_KEY + "merges")
        if merges is None:
            raise TokenizerError("BPE vocabulary without merges (tokenizer.ggml.merges is missing); "
                                 "the file is incomplete")
        bpe_ranks = _ranks(typed.as_str_list(_KEY + "merges", merges, error=TokenizerError))
        pre_name = typed.get_str(meta, _KEY + "pre", None, error=TokenizerError, max_len=256) or "default"
        pre, flags = resolve_pre("gemma4" if model == "gemma4" else pre_name)
        flags = dict(flags, add_space_prefix=False)
        add_bos, add_eos, escape_ws = flags["add_bos"], False, pre == "gemma4"
        if flags["no_default_bos"]:
            ids["bos"] = None
    add_space_prefix = _flag(meta, "add_space_prefix", flags["add_space_prefix"])
    ids.update(eot=None, eom=None)
    fim = dict(pre=None, suf=None, mid=None, pad=None, rep=None, sep=None)

    for name in list(ids):
        if ids[name] is not None and ids[name] >= n:
            ids[name] = None
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("eot", "eot_token_id"),
                      ("eom", "eom_token_id"), ("unk", "unknown_token_id"), ("sep", "seperator_token_id"),
                      ("pad", "padding_token_id"), ("mask", "mask_token_id")):
        v = typed.get_int(meta, _KEY + key, None, error=TokenizerError)
        if v is not None and 0 <= v < n:
            ids[name] = v
    for name, keys in (("pre", ("fim_pre_token_id", "prefix_token_id")), ("suf", ("fim_suf_token_id", "suffix_token_id")),
                       ("mid", ("fim_mid_token_id", "middle_token_id")), ("pad", ("fim_pad_token_id",)),
                       ("rep", ("fim_rep_token_id",)), ("sep", ("fim_sep_token_id",))):
        for key in keys:
            v = typed.get_int(meta, _KEY + key, None, error=TokenizerError)
            if v is not None and 0 <= v < n:
                fim[name] = v
    add_bos = _flag(meta, "add_bos_token", add_bos) or pre == "gemma4"  # llama.cpp forces BOS for Gemma 4
    add_eos = _flag(meta, "add_eos_token", add_eos)
    add_sep = _flag(meta, "add_sep_token", model == "bert")

    # special tokens found by their text (llama.cpp scans its hash map; we scan in id order, which
    # gives the same ids whenever a vocabulary holds one candidate per role)
    control = int(TokenAttr.CONTROL)

    def find(texts):
        found = [token_to_id[t] for t in texts if t in token_to_id]
        return min(found) if found else None

    def mark_control(tid):
        attrs[tid] |= control

    for role, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS)):
        if ids[role] is None:
            ids[role] = find(texts)
            if ids[role] is not None:
                mark_control(ids[role])
    for role, texts in (*zip(("pre", "suf", "mid"), _FIM_OTHER_TEXTS),
                        ("pad", _FIM_PAD_TEXTS), ("rep", _FIM_REP_TEXTS), ("sep", _FIM_SEP_TEXTS)):
        if fim[role] is None:
            fim[role] = find(texts)
            if fim[role] is not None:
                mark_control(fim[role])

    # control tokens named "unused..." are unused
    for tid in np.nonzero(attrs & control)[0].tolist():
        if "unused" in tokens[tid]:
            attrs[tid] |= TokenAttr.UNUSED

    eog = {fim[k] for k in ("pad", "rep", "sep") if fim[k] is not None}
    for t in _EOG_TEXTS:
        tid = token_to_id.get(t)
        if tid is not None:
            eog.add(tid)
            mark_control(tid)
    for t in _ALWAYS_RENDERED:
        if t in token_to_id:
            attrs[token_to_id[t]] = TokenAttr.USER_DEFINED
    eog.update(ids[k] for k in ("eos", "eot", "eom") if ids[k] is not None)
    texts = {tokens[t]: t for t in eog}
    if "<|end|>" in texts and (("<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))
                               or (("<|call|>" in texts or "<|calls|>" in texts) and "<|flush|>" in texts)):
        eog.discard(texts["<|end|>"])
        attrs[texts["<|end|>"]] = TokenAttr.USER_DEFINED
    if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
        eog.discard(texts["</s>"])
        attrs[texts["</s>"]] = TokenAttr.NORMAL

    lowercase = _flag(meta, "normalizer.lowercase", True)
    special_mask = int(TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN)
    special = np.nonzero(attrs & special_mask)[0].tolist()
    # longest first; llama.cpp's std::sort leaves ties in an unspecified order, which only matters for
    # two equal-length special tokens that overlap in the text
    special.sort(key=lambda t: -len(tokens[t].encode("utf-8")))

    name = str(meta.get("general.name", "")).lower()
    if "phi-3" in name or "phi3" in name:
        for tid in special:
            attrs[tid] |= TokenAttr.RSTRIP
        for t, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
            if t in token_to_id:
                if on:
                    attrs[token_to_id[t]] |= TokenAttr.RSTRIP
                else:
                    attrs[token_to_id[t]] &= ~int(TokenAttr.RSTRIP)
    elif any(p in str(meta.get(_KEY + "pre", "")) for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code")):
        if "<mask>" in token_to_id:
            attrs[token_to_id["<mask>"]] |= TokenAttr.LSTRIP

    vocab = Vocab(
        model=model, pre=pre, tokens=tokens, scores=scores, token_types=types, attrs=attrs,
        token_to_id=token_to_id, bpe_ranks=bpe_ranks,
        bos_id=ids["bos"], eos_id=ids["eos"], eot_id=ids["eot"], eom_id=ids["eom"], unk_id=ids["unk"],
        sep_id=ids["sep"], pad_id=ids["pad"], mask_id=ids["mask"], fim_ids=fim,
        add_bos=add_bos, add_eos=add_eos, add_sep=add_sep, add_space_prefix=add_space_prefix,
        remove_extra_whitespaces=_flag(meta, "remove_extra_whitespaces", False),
        escape_whitespaces=escape_ws, ignore_merges=flags["ignore_merges"], clean_spaces=flags["clean_spaces"],
        eog_ids=frozenset(eog), special_ids=special,
        normalizer_lowercase=lowercase,
        normalizer_strip_accents=_flag(meta, "normalizer.strip_accents", lowercase),
    )
    vocab.nl_id = _newline_id(vocab)
    return vocab


def _flag(meta, name: str, default: bool) -> bool:
    return typed.get_bool(meta, _KEY + name, default, error=TokenizerError)


def _array(meta, name: str, n: int, dtype, default):
    value = meta.get(_KEY + name)
    if value is None:
        return None if default is None else np.full(n, default, dtype=dtype)
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in "iuf":
        raise TokenizerError(f"tokenizer.ggml.{name} should be an array of numbers, but the file stores "
                             f"{type(value).__name__}; the file is damaged")  # fmt: skip
    arr = value
    if np.dtype(dtype).kind in "iu" and arr.dtype.kind == "f":  # a float token type: refuse NaN/inf casts
        if not np.isfinite(arr).all():
            raise TokenizerError(f"tokenizer.ggml.{name} holds values that are not finite; the file is damaged")
        arr = np.clip(arr, -(2**31), 2**31 - 1)
    if np.dtype(dtype).kind in "iu" and arr.dtype.kind in "iu" and arr.dtype.itemsize > 4:
        arr = np.clip(arr, -(2**31), 2**31 - 1)
    if arr.ndim != 1 or len(arr) < n:
        raise TokenizerError(f"tokenizer.ggml.{name} holds {arr.size} values for {n} tokens; the file is damaged")
    return arr[:n].astype(dtype, copy=False)


def _ranks(merges) -> dict[tuple[str, str], int]:
    ranks: dict[tuple[str, str], int] = {}
    for i, m in enumerate(merges):
        pos = m.find(" ", 1)  # llama.cpp splits at the first space after the first byte
        pair = (m[:pos], m[pos + 1:]) if pos >= 0 else ("", "")
        ranks.setdefault(pair, i)  # a repeated merge keeps its first rank
    return ranks


def _newline_id(vocab: Vocab) -> int | None:
    if vocab.model == "bert":
        return vocab.pad_id
    if vocab.byte_tokens:
        try:
            return vocab.byte_to_token(0x0A)
        except TokenizerError:
            return vocab.pad_id
    return vocab.token_to_id.get(BYTE_TO_UNICODE[0x0A], vocab.pad_id)
