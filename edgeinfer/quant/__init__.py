"""Block formats of GGML tensors: sizes, layouts, and numpy reference (de)quantizers.

    fmt = get_format(GGMLQuantizationType.Q4_K)      # the Q4_K class: block_size, type_size, block_dtype
    w = dequantize(t.data, t.ggml_type, t.shape, t.name)   # float32, shape t.shape
    raw = quantize(x, GGMLQuantizationType.Q8_0)     # uint8, shape (*x.shape[:-1], row_bytes)

These are the plain, readable oracles; the fast kernels live in edgeinfer.kernels.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from gguf.constants import GGMLQuantizationType

from ..errors import GGUFError, UnsupportedTypeError
from . import floats, iquants, kquants, legacy, lowbit  # noqa: F401  (importing registers the formats)
from .base import FORMATS, QuantFormat

__all__ = [
    "FORMATS",
    "QuantFormat",
    "SUPPORTED_TYPES",
    "QUANTIZABLE_TYPES",
    "get_format",
    "is_supported",
    "row_bytes",
    "check_raw",
    "dequantize",
    "quantize",
]

SUPPORTED_TYPES: tuple[GGMLQuantizationType, ...] = tuple(sorted(FORMATS))
QUANTIZABLE_TYPES: tuple[GGMLQuantizationType, ...] = tuple(
    t for t in SUPPORTED_TYPES if FORMATS[t].can_quantize
)


def _type_name(ggml_type) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"{ggml_type} (a type number the gguf package does not know)"


def _names(types: Sequence[GGMLQuantizationType]) -> str:
    return ", ".join(t.name for t in types)


def is_supported(ggml_type: GGMLQuantizationType | int) -> bool:
    """Whether tensors of this type can be dequantized."""
    try:
        return GGMLQuantizationType(ggml_type) in FORMATS
    except ValueError:
        return False


def get_format(ggml_type: GGMLQuantizationType | int, tensor_name: str | None = None) -> type[QuantFormat]:
    """The format class of a type; UnsupportedTypeError, naming the type and what is supported, if none."""
    if is_supported(ggml_type):
        return FORMATS[GGMLQuantizationType(ggml_type)]
    subject = f"Tensor {tensor_name!r} uses" if tensor_name else "This data uses"
    raise UnsupportedTypeError(
        f"{subject} the tensor type {_type_name(ggml_type)}, which edgeinfer cannot decode. "
        f"Supported types: {_names(SUPPORTED_TYPES)}. Use a model file quantized to one of these "
        "(llama.cpp's llama-quantize can convert it)."
    )


def row_bytes(ggml_type: GGMLQuantizationType | int, n_cols: int) -> int:
    """Bytes taken by one row of n_cols values (a multiple of the type's block size)."""
    fmt = get_format(ggml_type)
    if n_cols % fmt.block_size:
        raise ValueError(
            f"A {fmt.ggml_type.name} row holds a multiple of {fmt.block_size} values, not {n_cols}."
        )
    return n_cols // fmt.block_size * fmt.type_size


def check_raw(
    raw: np.ndarray,
    ggml_type: GGMLQuantizationType | int,
    shape: Sequence[int],
    tensor_name: str | None = None,
) -> tuple[type[QuantFormat], np.ndarray]:
    """Validate raw tensor bytes against a type and a (numpy-order) shape.

    Returns the format and the bytes as a flat uint8 array (zero-copy when raw is contiguous). Raises
    UnsupportedTypeError for an unknown type, GGUFError when the sizes do not agree.
    """
    fmt = get_format(ggml_type, tensor_name)
    shape = tuple(int(s) for s in shape)
    what = f"Tensor {tensor_name!r}" if tensor_name else "The data"
    n_cols = shape[-1] if shape else 1
    if n_cols % fmt.block_size:
        raise GGUFError(
            f"{what} ({fmt.ggml_type.name}, shape {shape}) has rows of {n_cols} values, not a multiple "
            f"of the {fmt.ggml_type.name} block size {fmt.block_size}; the file is damaged."
        )
    raw = np.asarray(raw)
    n_bytes = raw.size * raw.itemsize
    need = math.prod(shape) // fmt.block_size * fmt.type_size
    if n_bytes != need:
        raise GGUFError(
            f"{what} ({fmt.ggml_type.name}, shape {shape}) needs {need} bytes but {n_bytes} were given; "
            "the file is truncated or damaged."
        )
    return fmt, np.ascontiguousarray(raw).reshape(-1).view(np.uint8)


def dequantize(
    raw: np.ndarray,
    ggml_type: GGMLQuantizationType | int,
    shape: Sequence[int],
    tensor_name: str | None = None,
) -> np.ndarray:
    """Raw tensor bytes -> float32 array of `shape` (numpy order: the last axis is the row, ggml's ne[0])."""
    fmt, flat = check_raw(raw, ggml_type, shape, tensor_name)
    return fmt.dequantize(flat).reshape(tuple(shape))


def quantize(x: np.ndarray, ggml_type: GGMLQuantizationType | int) -> np.ndarray:
    """float32 values -> raw bytes, uint8 of shape (*x.shape[:-1], row_bytes), as ggml's reference
    quantizers (`quantize_row_<type>_ref`) write them."""
    fmt = get_format(ggml_type)
    if not fmt.can_quantize:
        raise UnsupportedTypeError(
            f"Quantizing to {fmt.ggml_type.name} is not implemented; edgeinfer can quantize to "
            f"{_names(QUANTIZABLE_TYPES)}."
        )
    x = np.asarray(x, dtype=np.float32)
    shape = x.shape or (1,)
    n_row_bytes = row_bytes(fmt.ggml_type, shape[-1])
    return fmt.quantize(x).reshape(*shape[:-1], n_row_bytes)
