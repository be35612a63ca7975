"""Typed reads of GGUF metadata: one place where a value's type and range are checked.

A model file is written by a stranger. Every hyper-parameter the loader reads goes through one of these
helpers, which accept only the types a converter writes for the key (an integer, a finite float, a
bool, a string, an array of them) and an optional range, and raise the caller's error class
(`GGUFError` by default) with a sentence naming the key, never a bare TypeError, ValueError or
OverflowError from `int()`/`float()` deep inside a layer.

    n_embd = get_int(md, "llama.embedding_length", lo=1, where=path)
    eps = get_float(md, "llama.attention.layer_norm_rms_epsilon", lo=0.0, where=path)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import GGUFError

REQUIRED: Any = object()
_INT_TYPES = (int, np.integer)
_FLOAT_TYPES = (int, float, np.integer, np.floating)


def _prefix(where: str | None) -> str:
    return f"{where}: " if where else ""


def _missing(key: str, where: str | None, error: type[Exception]) -> Exception:
    return error(
        f"{_prefix(where)}the metadata key {key!r} is missing, and it is needed; the file is incomplete "
        "or was written by a converter edgeinfer does not know."
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.size} {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items"
    return f"{type(value).__name__} {_show(value)}"


def _range(key, v, lo, hi, where, error) -> None:
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise error(f"{_prefix(where)}the metadata key {key!r} is {_show(v)}, outside the range {bounds}; "
                    "the file is corrupt or forged.")  # fmt: skip


def as_int(key: str, value: Any, lo: int | None = None, hi: int | None = None, where: str | None = None,
           error: type[Exception] = GGUFError) -> int:  # fmt: skip
    """`value` (of metadata key `key`) as a Python int, or `error` naming the key: only integer types
    are accepted (not bools, floats, strings or arrays)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, _INT_TYPES):
        raise error(f"{_prefix(where)}the metadata key {key!r} should be an integer, but the file stores "
                    f"{_kind(value)}; the file is corrupt or forged.")  # fmt: skip
    v = int(value)
    _range(key, v, lo, hi, where, error)
    return v


def as_float(key: str, value: Any, lo: float | None = None, hi: float | None = None, where: str | None = None,
             error: type[Exception] = GGUFError) -> float:  # fmt: skip
    """`value` as a finite Python float (integers accepted), or `error` naming the key."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, _FLOAT_TYPES):
        raise error(f"{_prefix(where)}the metadata key {key!r} should be a number, but the file stores "
                    f"{_kind(value)}; the file is corrupt or forged.")  # fmt: skip
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v):
        raise error(f"{_prefix(where)}the metadata key {key!r} is {v}, not a finite number; the file is "
                    "corrupt or forged.")  # fmt: skip
    _range(key, v, lo, hi, where, error)
    return v


def as_bool(key: str, value: Any, where: str | None = None, error: type[Exception] = GGUFError) -> bool:
    """A bool (or an integer 0/1, as some converters write flags), or `error` naming the key."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, _INT_TYPES) and int(value) in (0, 1):
        return bool(value)
    raise error(f"{_prefix(where)}the metadata key {key!r} should be a bool, but the file stores {_kind(value)}; "
                "the file is corrupt or forged.")  # fmt: skip


def as_str(key: str, value: Any, where: str | None = None, error: type[Exception] = GGUFError,
           max_len: int | None = None) -> str:  # fmt: skip
    if not isinstance(value, str):
        raise error(f"{_prefix(where)}the metadata key {key!r} should be a string, but the file stores "
                    f"{_kind(value)}; the file is corrupt or forged.")  # fmt: skip
    if max_len is not None and len(value) > max_len:
        raise error(f"{_prefix(where)}the metadata key {key!r} is a string of {len(value)} characters, more "
                    f"than the {max_len} allowed; the file is corrupt or forged.")  # fmt: skip
    return value


def as_str_list(key: str, value: Any, where: str | None = None, error: type[Exception] = GGUFError) -> list[str]:
    """A list of strings (a GGUF string array), or `error` naming the key."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise error(f"{_prefix(where)}the metadata key {key!r} should be an array of strings, but the file "
                    f"stores {_kind(value)}; the file is corrupt or forged.")  # fmt: skip
    return list(value)


def as_num_array(key: str, value: Any, where: str | None = None, error: type[Exception] = GGUFError,
                 integer: bool = False) -> np.ndarray:  # fmt: skip
    """A 1-D numeric numpy array (a GGUF array of numbers), or `error` naming the key. Floats must be
    finite; `integer`: only integer item types."""
    ok = isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in ("iu" if integer else "iuf")
    if not ok:
        what = "integers" if integer else "numbers"
        raise error(f"{_prefix(where)}the metadata key {key!r} should be an array of {what}, but the file stores "
                    f"{_kind(value)}; the file is corrupt or forged.")  # fmt: skip
    if value.dtype.kind == "f" and value.size and not np.isfinite(value).all():
        raise error(f"{_prefix(where)}the metadata key {key!r} holds values that are not finite numbers; the "
                    "file is corrupt or forged.")  # fmt: skip
    return value


def _get(md: Mapping[str, Any], key: str, default: Any, where, error):
    if key in md:
        return md[key], True
    if default is REQUIRED:
        raise _missing(key, where, error)
    return default, False


def get_int(md: Mapping[str, Any], key: str, default: Any = REQUIRED, lo: int | None = None, hi: int | None = None,
            where: str | None = None, error: type[Exception] = GGUFError) -> Any:  # fmt: skip
    """md[key] as a checked int; `default` (returned as it is) when absent, `error` when required."""
    v, found = _get(md, key, default, where, error)
    return as_int(key, v, lo, hi, where, error) if found else v


def get_float(md: Mapping[str, Any], key: str, default: Any = REQUIRED, lo: float | None = None,
              hi: float | None = None, where: str | None = None, error: type[Exception] = GGUFError) -> Any:  # fmt: skip
    v, found = _get(md, key, default, where, error)
    return as_float(key, v, lo, hi, where, error) if found else v


def get_bool(md: Mapping[str, Any], key: str, default: Any = REQUIRED, where: str | None = None,
             error: type[Exception] = GGUFError) -> Any:  # fmt: skip
    v, found = _get(md, key, default, where, error)
    return as_bool(key, v, where, error) if found else v


def get_str(md: Mapping[str, Any], key: str, default: Any = REQUIRED, where: str | None = None,
            error: type[Exception] = GGUFError, max_len: int | None = None) -> Any:  # fmt: skip
    v, found = _get(md, key, default, where, error)
    return as_str(key, v, where, error, max_len) if found else v


__all__ = [
    "REQUIRED", "as_bool", "as_float", "as_int", "as_num_array", "as_str", "as_str_list",
    "get_bool", "get_float", "get_int", "get_str",
]  # fmt: skip
