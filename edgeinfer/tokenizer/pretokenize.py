"""BPE pre-tokenizers: split text into words exactly as llama.cpp's `unicode_regex_split` does.

`tokenizer.ggml.pre` names a list of regexes (llm_tokenizer_bpe's constructor). Each regex in turn
splits every piece the previous one left, and the matches and the gaps between them both become
pieces. llama.cpp runs them in one of two ways, and so do we:

- The common regexes (gpt2, llama3, qwen2, qwen35) have hand-written splitters in llama.cpp whose
  behaviour differs from the regex text in corners (e.g. a lone space before a digit). We express each
  of those splitters as a regex over the *collapsed* text below that reproduces it exactly
  (tests/test_tokenizer.py checks them against a line-by-line port).
- Every other regex runs in std::regex. When it uses `\\p{..}`, llama.cpp runs it on the collapsed text
  too: ASCII stays itself, every other code point becomes one byte naming its category (0xD1 number,
  0xD2 letter, 0xD3 punctuation, 0xD4 mark, 0xD5 symbol, 0xD0 anything else) or 0x0B when it is
  whitespace, and `\\p{L}` becomes `[\\xD2A-Za-z]` and so on. Without `\\p{..}` it runs on the code
  points with non-ASCII whitespace turned into 0x0B. Either way `\\s` means ASCII whitespace only
  (not \\x1c-\\x1f as in Python), `$` means the end of the piece, and categories come from
  llama.cpp's Unicode 15.1 tables (unicode_data.py), not from Python's.
"""

from __future__ import annotations

import regex

from ..errors import TokenizerError
from .unicode_data import WHITESPACE, category

# ---------------------------------------------------------------------------------------------------
# collapsed text

_CAT_BYTE = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}


class _CollapseTable(dict):
    """str.translate table that fills itself: code point -> collapsed code point."""

    def __init__(self, keep_non_ascii: bool):
        super().__init__((c, c) for c in range(128))
        self.keep = keep_non_ascii

    def __missing__(self, cp: int) -> int:
        if cp in WHITESPACE:
            out = 0x0B
        elif self.keep:
            out = cp
        else:
            out = ord(_CAT_BYTE.get(category(cp), "\xd0"))
        self[cp] = out
        return out


COLLAPSE = _CollapseTable(keep_non_ascii=False)   # for regexes with \p{..}
WIDE = _CollapseTable(keep_non_ascii=True)        # for regexes without: only whitespace folded


def collapse(text: str) -> str:
    """llama.cpp's collapsed form of `text`: one char per code point (see the module docstring)."""
    return text.translate(COLLAPSE)


# ---------------------------------------------------------------------------------------------------
# llama.cpp's hand-written splitters, as regexes over the collapsed text

_L, _N, _M, _W = "A-Za-z\xd2", "0-9\xd1", "\xd4", "\t\n\x0b\x0c\r "
# A whitespace run: all of it at the end of the piece, else all but its last char (which then leads
# the next word), else the single char.
_WS_TAIL = rf"[{_W}]+\Z|[{_W}]+(?=[{_W}])|[{_W}]"

_CUSTOM = {
    "gpt2": rf"'(?:[stmd]|re|ve|ll)| ?[{_L}]+| ?[{_N}]+| ?[^{_W}{_L}{_N}]+|{_WS_TAIL}",
    "llama3": (rf"'[sStTmMdD]|'(?:[rR][eE]|[vV][eE]|[lL][lL])|[^\r\n{_L}{_N}]?[{_L}]+|[{_N}]{{1,3}}"
               rf"| ?[^{_W}{_L}{_N}]+[\r\n]*|[{_W}]*[\r\n]|{_WS_TAIL}"),
    "qwen2": (rf"'[sStTmMdD]|'(?:[rR][eE]|[vV][eE]|[lL][lL])|[^\r\n{_L}{_N}]?[{_L}]+|[{_N}]"
              rf"| ?[^{_W}{_L}{_N}]+[\r\n]*|[{_W}]*[\r\n]|{_WS_TAIL}"),
    "qwen35": (rf"'[sStTmMdD]|'(?:[rR][eE]|[vV][eE]|[lL][lL])|[^\r\n{_L}{_N}]?[{_L}{_M}]+|[{_N}]"
               rf"| ?[^{_W}{_L}{_M}{_N}]+[\r\n]*|[{_W}]*[\r\n]|{_WS_TAIL}"),
}

# The regex texts llama.cpp recognises and hands to those splitters.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CUSTOM_BY_TEXT = {_GPT2: "gpt2", _LLAMA3: "llama3", _QWEN2: "qwen2", _QWEN35: "qwen35"}

_TEKKEN_WORD = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
_TEKKEN_WORD2 = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
_CONTRACTION = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_WS_END = r"|\s*[\r\n]+|\s+(?!\S)|\s+"

# llama.cpp's regex lists per pre-tokenizer type (llm_tokenizer_bpe's constructor).
PRE_REGEXES: dict[str, list[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "llama3": [_LLAMA3],
    "deepseek-llm": [
        "[\r\n]",
        "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
        "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
        "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf"
        "\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d"
        "\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4"
        "\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
        "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
        "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
        "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
        "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
        "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
        "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
        "\\s+$",
        "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
        "\\p{N}+",
    ],
    "deepseek3-llm": [
        r"\p{N}{1,3}",
        "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
        "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
    ],
    "deepseek-coder": ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"],
    "starcoder": [r"\p{N}", _GPT2],
    "gpt2": [_GPT2],
    "qwen2": [_QWEN2],
    "qwen35": [_QWEN35],
    "poro": [" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"],
    "chatglm4": [_LLAMA3],
    "viking": [" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+", r"\p{N}"],
    "tekken": [_TEKKEN_WORD + "|" + _TEKKEN_WORD2 + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*" + _WS_END],
    "gpt4o": [_TEKKEN_WORD + _CONTRACTION + "?|" + _TEKKEN_WORD2 + _CONTRACTION
              + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*" + _WS_END],
    "seed-coder": [_CONTRACTION + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+" + _WS_END],
    "bailingmoe": [r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"],
    "ufakzeka": [r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*" + _WS_END],
    "jais2": [
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}",
    ],
    "spark2_5": [
        '\\p{N}{1,3}',
        '[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+',
        '[!"#$%&\'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+',
        '\\p{N}',
    ],
    "youtu": [
        '[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+',
        "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ],
    "granite-emb-multi": [
        "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))*((?=[\\p{L}\\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))+((?=[\\p{L}\\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ],
    "laguna": [
        '[^\\n]+|[\\n]+',
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ],
    "exaone-moe": [
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
    ],
    # Gemma 4: spaces already "▁", BPE over whole lines of raw UTF-8 (no byte encoding)
    "gemma4": ["[^\\n]+|[\\n]+"],
    "minicpm5": [
        '\\p{N}{1,3}',
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ],
}

# tokenizer.ggml.pre -> (type, flags that differ from the BPE defaults), as in llama_vocab::impl::load
_NO_CLEAN = {"clean_spaces": False}
_PRE_NAMES: dict[str, tuple[str, dict]] = {
    "default": ("default", {}),
    **{n: ("llama3", {"ignore_merges": True, "add_bos": True}) for n in (
        "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano")},
    "dbrx": ("llama3", {}),
    "smaug-bpe": ("llama3", {}),
    "deepseek-llm": ("deepseek-llm", _NO_CLEAN),
    "deepseek-coder": ("deepseek-coder", _NO_CLEAN),
    **{n: ("deepseek3-llm", _NO_CLEAN) for n in ("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4")},
    "falcon": ("falcon", {}),
    **{n: ("starcoder", {}) for n in ("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2")},
    **{n: ("starcoder", _NO_CLEAN) for n in ("command-r", "smollm")},
    **{n: ("gpt2", {}) for n in (
        "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
        "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "exaone4")},
    **{n: ("gpt2", _NO_CLEAN) for n in ("trillion", "granite-docling")},
    **{n: ("qwen2", _NO_CLEAN) for n in (
        "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open")},
    "megrez": ("qwen2", {}),
    "stablelm2": ("qwen2", {}),
    "qwen35": ("qwen35", _NO_CLEAN),
    "poro-chat": ("poro", _NO_CLEAN),
    "bloom": ("poro", {}),
    "gpt3-finnish": ("poro", {}),
    "chatglm-bpe": ("chatglm4", {"no_default_bos": True}),
    **{n: ("chatglm4", {"no_default_bos": True, "ignore_merges": True}) for n in ("glm4", "glm5")},
    "viking": ("viking", _NO_CLEAN),
    "tekken": ("tekken", {"clean_spaces": False, "ignore_merges": True, "add_bos": True}),
    **{n: ("gpt4o", _NO_CLEAN) for n in ("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2")},
    "seed-coder": ("seed-coder", _NO_CLEAN),
    **{n: ("bailingmoe", _NO_CLEAN) for n in ("bailingmoe", "bailingmoe2", "llada-moe")},
    "ufakzeka": ("ufakzeka", _NO_CLEAN),
    "jais-2": ("jais2", {}),
    "spark2_5": ("spark2_5", _NO_CLEAN),
    "youtu": ("youtu", {"clean_spaces": False, "ignore_merges": True}),
    "exaone-moe": ("exaone-moe", {}),
    "granite-embed-multi-97m": ("granite-emb-multi", {"clean_spaces": False, "ignore_merges": True}),
    "minicpm5": ("minicpm5", {"ignore_merges": True}),
    "laguna": ("laguna", _NO_CLEAN),
    **{n: ("gemma4", {}) for n in ("gemma4", "granite-embed-multi-311m")},
}


def resolve_pre(name: str) -> tuple[str, dict]:
    """`tokenizer.ggml.pre` -> (pre-tokenizer type, {clean_spaces, ignore_merges, no_default_bos, add_bos}).
    add_bos: llama.cpp's default when the file has no tokenizer.ggml.add_bos_token (true for llama3's group)."""
    try:
        pre_type, extra = _PRE_NAMES[name]
    except KeyError:
        raise TokenizerError(
            f"pre-tokenizer {name!r} (tokenizer.ggml.pre) is not supported; supported: "
            f"{', '.join(sorted(_PRE_NAMES))}") from None
    flags = {"clean_spaces": True, "ignore_merges": False, "no_default_bos": False, "add_bos": False}
    flags.update(extra)
    return pre_type, flags


# ---------------------------------------------------------------------------------------------------
# std::regex semantics in Python

_UCAT = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5",
         "Lu": "\xd2", "Ll": "\xd2", "Lt": "\xd2", "Lm": "\xd2", "Lo": "\xd2"}
_UCAT_ASCII = {  # the ASCII members of each category, written as llama.cpp writes them
    "N": "0-9", "L": "A-Za-z", "M": "", "P": r"!-#%-*,-/:-;?-@\[-\]_\{\}", "S": r"\$\+<->\^`\|~",
}
_UCAT_ASCII.update({k: _UCAT_ASCII["L"] for k in ("Lu", "Ll", "Lt", "Lm", "Lo")})


def _collapse_regex(expr: str) -> str:
    """Replace each `\\p{X}` by the collapsed class llama.cpp substitutes for it."""
    out, inside, i = [], False, 0
    while i < len(expr):
        c = expr[i]
        if c == "[" and (i == 0 or expr[i - 1] != "\\"):
            inside = True
        elif inside and c == "]" and expr[i - 1] != "\\":
            inside = False
        elif expr.startswith("\\p{", i):
            end = expr.find("}", i + 3)
            name = expr[i + 3:end] if end != -1 and end <= i + 10 else None
            if name in _UCAT:
                body = _UCAT[name] + _UCAT_ASCII[name]
                out.append(body if inside else f"[{body}]")
                i = end + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _to_python(expr: str) -> str:
    """ECMAScript -> Python regex: `$` outside a class means the end of the piece only."""
    out, inside, escaped = [], False, False
    for c in expr:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        elif c == "$" and not inside:
            out.append(r"\Z")
            continue
        out.append(c)
    return "".join(out)


def _uses_categories(expr: str) -> bool:
    return any(f"\\p{{{k}}}" in expr for k in _UCAT)


class _Step:
    """One regex of the list: splits each piece into matches and the gaps between them."""

    def __init__(self, expr: str):
        custom = _CUSTOM_BY_TEXT.get(expr)
        if custom is not None:
            self.collapsed, pattern = True, _CUSTOM[custom]
        elif _uses_categories(expr):
            if any(ord(c) >= 128 for c in expr):
                raise TokenizerError(f"regex mixes unicode categories and non-ASCII text: {expr!r}")
            self.collapsed, pattern = True, _to_python(_collapse_regex(expr))
        else:
            self.collapsed, pattern = False, _to_python(expr)
        self.regex = regex.compile(pattern, regex.ASCII)

    def split(self, src: str, start: int, end: int, out: list[int]) -> None:
        """Append the end offsets of the pieces of src[start:end] to `out`."""
        piece = src if (start == 0 and end == len(src)) else src[start:end]
        prev = 0
        for m in self.regex.finditer(piece):
            s, e = m.span()
            if s > prev:  # the gap before the match
                out.append(start + s)
            if e > s:  # empty matches make empty words in llama.cpp: no tokens, so we drop them
                out.append(start + e)
            prev = e
        if prev < len(piece):
            out.append(end)


class PreTokenizer:
    """Splits text into the words the BPE merges run on, for one `tokenizer.ggml.pre` type."""

    def __init__(self, pre_type: str):
        if pre_type not in PRE_REGEXES:
            raise TokenizerError(f"pre-tokenizer type {pre_type!r} is not supported")
        self.pre_type = pre_type
        self.steps = [_Step(e) for e in PRE_REGEXES[pre_type]]

    def split(self, text: str) -> list[str]:
        """The words of `text` (not yet byte-encoded), in order; they concatenate to `text`."""
        if not text:
            return []
        sources = {}
        ends = [len(text)]
        for step in self.steps:
            key = step.collapsed
            if key not in sources:
                sources[key] = text.translate(COLLAPSE if key else WIDE)
            src = sources[key]
            new: list[int] = []
            start = 0
            for end in ends:
                step.split(src, start, end, new)
                start = end
            ends = new
        words, start = [], 0
        for end in ends:
            words.append(text[start:end])
            start = end
        return words
