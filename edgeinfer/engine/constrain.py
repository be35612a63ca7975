"""Constrained decoding: every chosen token obeys a grammar (a JSON schema, a Lark or GBNF grammar, a
regex), with llguidance (the Rust engine llama.cpp itself can build with) computing the set of allowed
tokens at each step as a bitmask.

    grammar = Grammar.json_schema({"type": "object", ...})    # GrammarError (fail closed) if it does not compile
    c = grammar.matcher(tokenizer)                            # one per sequence
    c.mask(logits)                                             # forbidden tokens -> -inf (a copy)
    c.consume(token)                                           # after the token is chosen

The engine applies the mask before sampling, and in speculative verification before each position's
choice: a draft the grammar forbids can never stand (greedy: the argmax of the masked logits differs
from it; sampled: its probability is 0). The llguidance tokenizer (every token's bytes) is built once
per tokenizer and cached.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EdgeInferError

_TOKENIZERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class GrammarError(EdgeInferError, ValueError):
    """A schema or grammar that does not compile (HTTP 400 naming the field): never unconstrained output."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _llguidance():
    try:
        import llguidance
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise EdgeInferError(f"Constrained output needs the llguidance package ({e}): pip install llguidance") from None
    return llguidance


class _Wrapped:
    """What llguidance's TokenizerWrapper reads: every token's bytes (control tokens marked with a
    leading 0xff, as its llama.cpp binding does), EOS/BOS, and an encoder of text."""

    def __init__(self, tokenizer):
        from ..tokenizer.vocab import TokenAttr

        v = tokenizer.vocab
        self._tok = tokenizer
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else min(tokenizer.eog_ids, default=0)
        self.bos_token_id = tokenizer.bos_id
        tokens, special = [], []
        for i in range(tokenizer.n_vocab):
            b = tokenizer.token_to_piece(i, special=True)
            attr = int(v.attrs[i])
            if attr & TokenAttr.CONTROL or (attr & TokenAttr.USER_DEFINED and b.startswith(b"<") and b.endswith(b">")):
                b = b"\xff" + b
                special.append(i)
            tokens.append(b)
        self.tokens = tokens
        self.special_token_ids = special

    def __call__(self, text):
        if isinstance(text, bytes):
            raise TypeError("text, not bytes")
        return self._tok.encode(text, add_special=False, parse_special=False)


def llg_tokenizer(tokenizer):
    """The llguidance tokenizer of `tokenizer` (built once, cached while the tokenizer lives)."""
    with _LOCK:
        t = _TOKENIZERS.get(tokenizer)
        if t is None:
            llg = _llguidance()
            eog = sorted(tokenizer.eog_ids) or None
            t = llg.LLTokenizer(llg.TokenizerWrapper(_Wrapped(tokenizer)), n_vocab=tokenizer.n_vocab, eos_token=eog)
            _TOKENIZERS[tokenizer] = t
        return t


@dataclass(frozen=True)
class Grammar:
    """A compiled constraint (llguidance's grammar text), and what it came from (for messages)."""

    source: str  # "json_schema", "json_object", "lark", "gbnf", "regex"
    text: str

    @classmethod
    def json_schema(cls, schema: Any, field: str = "json_schema") -> "Grammar":
        llg = _llguidance()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise GrammarError(f"'{field}' is not valid JSON: {e}.", field) from None
        if not isinstance(schema, (dict, bool)):
            raise GrammarError(f"'{field}' must be a JSON Schema (an object), got {type(schema).__name__}.", field)
        try:
            text = llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        except (ValueError, TypeError) as e:
            raise GrammarError(f"'{field}' is not a usable JSON Schema: {e}", field) from None
        return cls._checked("json_schema", text, field)

    @classmethod
    def json_object(cls, field: str = "response_format") -> "Grammar":
        """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
        return cls.json_schema({"type": "object"}, field)

    @classmethod
    def lark(cls, grammar: str, field: str = "grammar") -> "Grammar":
        return cls._checked("lark", _llguidance().LLMatcher.grammar_from_lark(_text(grammar, field)), field)

    @classmethod
    def gbnf(cls, grammar: str, field: str = "grammar") -> "Grammar":
        """A llama.cpp GBNF grammar (converted to Lark by llguidance)."""
        llg = _llguidance()
        try:
            from llguidance.gbnf_to_lark import any_to_lark

            lark = any_to_lark(_text(grammar, field))  # GBNF converted; Lark passes through
        except Exception as e:  # noqa: BLE001 - the converter's own parse errors
            raise GrammarError(f"'{field}' is not a valid GBNF grammar: {e}", field) from None
        return cls._checked("gbnf", llg.LLMatcher.grammar_from_lark(lark), field)

    @classmethod
    def regex(cls, pattern: str, field: str = "regex") -> "Grammar":
        return cls._checked("regex", _llguidance().LLMatcher.grammar_from_regex(_text(pattern, field)), field)

    @classmethod
    def _checked(cls, source: str, text: str, field: str) -> "Grammar":
        llg = _llguidance()
        error, messages = llg.LLMatcher.validate_grammar_with_warnings(text)
        if error:
            raise GrammarError(f"'{field}' does not compile: {messages[0] if messages else 'unknown error'}", field)
        return cls(source, text)

    def matcher(self, tokenizer) -> "Constraint":
        return Constraint(self, tokenizer)


def grammar_from_request(response_format: Any = None, grammar: Any = None, json_schema: Any = None,
                         regex: Any = None) -> Grammar | None:  # fmt: skip
    """The constraint a request asks for, in the shapes the APIs use: OpenAI's response_format
    ({"type": "text" | "json_object"}, or {"type": "json_schema", "json_schema": {"schema": {...}}}),
    llama-server's `grammar` (GBNF; Lark is taken too) and `json_schema`, or a `regex`. At most one;
    None when none is given. GrammarError naming the field for anything that does not compile."""
    given = [n for n, v in (("response_format", response_format), ("grammar", grammar), ("json_schema", json_schema),
                            ("regex", regex)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise GrammarError(f"Give one of {', '.join(given)}: they would constrain the same reply.", given[1])
    if grammar is not None:
        return Grammar.gbnf(grammar, "grammar")
    if json_schema is not None:
        return Grammar.json_schema(json_schema, "json_schema")
    if regex is not None:
        return Grammar.regex(regex, "regex")
    if response_format is None:
        return None
    rf = response_format
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise GrammarError("'response_format' must be an object with a 'type' (\"text\", \"json_object\" or \"json_schema\").",
                           "response_format")  # fmt: skip
    kind = rf["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        schema = rf.get("schema")  # llama-server also takes a schema here
        return Grammar.json_schema(schema, "response_format.schema") if schema is not None else Grammar.json_object()
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or "schema" not in js:
            raise GrammarError("'response_format.json_schema' must be an object holding a 'schema'.",
                               "response_format.json_schema")  # fmt: skip
        return Grammar.json_schema(js["schema"], "response_format.json_schema.schema")
    raise GrammarError(f"'response_format.type' must be \"text\", \"json_object\" or \"json_schema\", got {kind!r}.",
                       "response_format.type")  # fmt: skip


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise GrammarError(f"'{field}' must be a non-empty string.", field)
    return value


class Constraint:
    """One sequence's grammar state: which tokens may come next, and the tokens taken so far."""

    def __init__(self, grammar: Grammar, tokenizer):
        llg = _llguidance()
        self.grammar = grammar
        self.n_vocab = tokenizer.n_vocab
        self.matcher = llg.LLMatcher(llg_tokenizer(tokenizer), grammar.text, log_level=0)
        if self.matcher.is_error():
            raise GrammarError(f"The {grammar.source} grammar does not compile: {self.matcher.get_error()}")
        self._words = (self.n_vocab + 31) // 32
        self.n_consumed = 0

    def allowed(self) -> np.ndarray:
        """bool (n_vocab,): the tokens the grammar allows next."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, count=self.n_vocab, bitorder="little").view(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of logits (n_logits,) with every token the grammar forbids at -inf (ids past the
        tokenizer's vocabulary too). EdgeInferError if it allows none."""
        allowed = self.allowed()
        n = min(self.n_vocab, logits.shape[-1])
        out = np.full(logits.shape, -np.inf, dtype=np.float32)
        np.copyto(out[:n], logits[:n], where=allowed[:n])
        if not allowed[:n].any():
            raise EdgeInferError(f"The {self.grammar.source} constraint allows no token here ({self.matcher.get_error() or 'stuck'}).")
        return out

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise EdgeInferError(f"Token {token} breaks the {self.grammar.source} constraint: {self.matcher.get_error()}")
        self.n_consumed += 1

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more but the end."""
        return self.matcher.is_stopped()


__all__ = ["Constraint", "Grammar", "GrammarError", "grammar_from_request", "llg_tokenizer"]
