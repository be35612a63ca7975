"""Gemma 4's tool-call syntax, for toolcalls.py: `<|tool_call>call:NAME{key:value,...}<tool_call|>`, where a
string is `<|"|>text<|"|>`, numbers and true/false are bare, objects are `{key:value,...}` with bare keys
in sorted order and arrays `[value,...]` (the official template's `format_argument`).

    to_json('{city:<|"|>Paris<|"|>,days:3}')   -> '{"city": "Paris", "days": 3}'
    from_value({"city": "Paris", "days": 3})     -> '{city:<|"|>Paris<|"|>,days:3}'
    schema_lark(schema, q, "a0")                 -> Lark rules whose rule a0 is a value of the schema
"""

from __future__ import annotations

import json
import re
from typing import Any

QUOTE = '<|"|>'
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?$")


def to_json(text: str) -> str:
    """The JSON text of one Gemma value (the arguments of a call: an object). ValueError if it is not one."""
    value, end = _value(text.strip(), 0)
    if end != len(text.strip()):
        raise ValueError(f"text after the value at {end}")
    return json.dumps(value, ensure_ascii=False)


def _value(s: str, i: int) -> tuple[Any, int]:
    if s.startswith(QUOTE, i):
        j = s.find(QUOTE, i + len(QUOTE))
        if j < 0:
            raise ValueError("an unterminated string")
        return s[i + len(QUOTE) : j], j + len(QUOTE)
    if s.startswith("{", i):
        out: dict = {}
        i += 1
        if s.startswith("}", i):
            return out, i + 1
        while True:
            if s.startswith(QUOTE, i):
                key, i = _value(s, i)
            else:
                j = s.find(":", i)
                if j < 0:
                    raise ValueError("a key without ':'")
                key, i = s[i:j].strip(), j
            if not s.startswith(":", i):
                raise ValueError(f"':' expected at {i}")
            out[key], i = _value(s, i + 1)
            if s.startswith("}", i):
                return out, i + 1
            if not s.startswith(",", i):
                raise ValueError(f"',' or '}}' expected at {i}")
            i += 1
    if s.startswith("[", i):
        items: list = []
        i += 1
        if s.startswith("]", i):
            return items, i + 1
        while True:
            v, i = _value(s, i)
            items.append(v)
            if s.startswith("]", i):
                return items, i + 1
            if not s.startswith(",", i):
                raise ValueError(f"',' or ']' expected at {i}")
            i += 1
    m = re.compile(r"[^,}\]]*").match(s, i)
    word = m.group(0).strip()
    if word in ("true", "false"):
        return word == "true", m.end()
    if word in ("null", "None"):
        return None, m.end()
    if _NUMBER.match(word):
        return (float(word) if any(c in word for c in ".eE") else int(word)), m.end()
    raise ValueError(f"not a value: {word!r}")


def from_value(value: Any) -> str:
    """A value as the template writes a call's arguments (format_argument with bare keys)."""
    if isinstance(value, str):
        return QUOTE + value + QUOTE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{from_value(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(from_value(v) for v in value) + "]"
    return "null" if value is None else str(value)


def schema_lark(schema: Any, q: str, name: str) -> str:
    """Lark rules (the first named `name`) for a value of a JSON Schema in Gemma's syntax; `q`: the Lark
    literal of the string quote (its special token). Strings (maxLength, enum, const), integers, numbers,
    booleans, arrays (items, minItems, maxItems) and objects (properties in sorted order, the required ones mandatory, others
    optional) are followed; anything else (anyOf, $ref, untyped) takes any Gemma value."""
    rules: list[str] = []
    counter = [0]

    def fresh() -> str:
        counter[0] += 1
        return f"{name}_{counter[0]}"

    def generic() -> str:
        g = f"{name}_any"
        if not any(r.startswith(g + ":") for r in rules):
            rules.append(f"{g}: {q} /(?s:[^\\x00]*)/ {q} | /-?[0-9]+(\\.[0-9]+)?/ | \"true\" | \"false\" | \"null\""
                         f' | "{{" ({g}_kv ("," {g}_kv)*)? "}}" | "[" ({g} ("," {g})*)? "]"')
            rules.append(f'{g}_kv: /[A-Za-z_][A-Za-z0-9_]*/ ":" {g}')
        return g

    def value(s: Any) -> str:
        if not isinstance(s, dict):
            return generic()
        if "const" in s:
            return literal(s["const"])
        if "enum" in s:
            return "(" + " | ".join(literal(v) for v in s["enum"]) + ")"
        t = s.get("type")
        if t == "string":
            n = s.get("maxLength")
            body = f"/(?s:[^\\x00]{{0,{int(n)}}})/" if isinstance(n, int) else "/(?s:[^\\x00]*)/"
            return f"{q} {body} {q}"
        if t == "integer":
            return "/-?(0|[1-9][0-9]{0,17})/"
        if t == "number":
            return "/-?(0|[1-9][0-9]{0,17})(\\.[0-9]{1,17})?([eE][-+]?[0-9]{1,3})?/"
        if t == "boolean":
            return '("true" | "false")'
        if t == "null":
            return '"null"'
        if t == "array":
            r = fresh()
            item = value(s.get("items", {}))
            lo, hi = s.get("minItems", 0), s.get("maxItems")
            lo = lo if isinstance(lo, int) and lo > 0 else 0
            more = f"{{{max(lo - 1, 0)},{hi - 1}}}" if isinstance(hi, int) and hi >= max(lo, 1) else (
                f"{{{lo - 1},}}" if lo > 1 else "*")  # fmt: skip
            if isinstance(hi, int) and hi <= 0:
                rules.append(f'{r}: "[" "]"')
            else:
                body = f'{item} ("," {item}){more}'
                rules.append(f'{r}: "[" {body if lo else "(" + body + ")?"} "]"')
            return r
        if t == "object" and isinstance(s.get("properties"), dict):
            return obj(s)
        return generic()

    def literal(v: Any) -> str:
        if isinstance(v, str):
            return f"{q} {json.dumps(v)} {q}"
        return json.dumps(from_value(v))

    def obj(s: dict) -> str:
        props = sorted(s["properties"].items())
        required = set(s.get("required", []))
        r = fresh()
        # tail(i, first): the properties from i on; first: none written yet (no comma before the next)
        tails: dict[tuple[int, bool], str] = {}

        def tail(i: int, first: bool) -> str | None:
            if i == len(props):
                return None
            key = (i, first)
            if key not in tails:
                k, sub = props[i]
                t = f"{r}_{i}{'f' if first else 'n'}"
                tails[key] = t
                item = ("" if first else '"," ') + f'"{k}:" {value(sub)}'
                rest = tail(i + 1, False)
                alts = [item + (f" {rest}" if rest else "")]
                if k not in required:
                    skip = tail(i + 1, first)
                    alts.append(skip if skip else '""')
                rules.append(f"{t}: " + " | ".join(alts))
            return tails[key]

        first = tail(0, True)
        rules.append(f'{r}: "{{" {first or ""} "}}"')
        return r

    top = value(schema)
    if top != name:
        rules.insert(0, f"{name}: {top}")
    return "\n".join(rules) + "\n"


__all__ = ["QUOTE", "from_value", "schema_lark", "to_json"]
