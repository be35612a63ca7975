"""The base class of every block format, and the registry the formats add themselves to.

A GGML tensor row is a run of blocks; a block holds `block_size` values in `type_size` bytes. Each
format is a small class (like gguf-py's `gguf/quants.py`) that states its block as a numpy structured
dtype, field for field as `block_<type>` in ggml-common.h, and decodes a run of blocks in plain,
vectorized numpy that matches ggml's `dequantize_row_<type>` bit for bit. That numpy code is the oracle
every faster kernel is tested against.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

# ggml_type -> format class, filled in by QuantFormat.__init_subclass__.
FORMATS: dict[GGMLQuantizationType, type[QuantFormat]] = {}


class QuantFormat:
    """One GGML block format. Subclasses are declared as `class Q4_0(QuantFormat, ggml_type=...)`."""

    ggml_type: ClassVar[GGMLQuantizationType]
    block_size: ClassVar[int]  # values per block
    type_size: ClassVar[int]  # bytes per block
    block_dtype: ClassVar[np.dtype]  # one block, as ggml-common.h lays it out (little-endian)
    can_quantize: ClassVar[bool] = False

    def __init_subclass__(cls, ggml_type: GGMLQuantizationType, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.ggml_type = ggml_type
        cls.block_size, cls.type_size = GGML_QUANT_SIZES[ggml_type]
        cls.can_quantize = "quantize_blocks" in cls.__dict__
        if cls.block_dtype.itemsize != cls.type_size:
            size = cls.block_dtype.itemsize
            raise TypeError(f"{cls.__name__}.block_dtype is {size} bytes, not {cls.type_size}")
        if ggml_type in FORMATS:
            raise TypeError(f"{ggml_type.name} is registered twice")
        FORMATS[ggml_type] = cls

    @classmethod
    def blocks(cls, raw: np.ndarray) -> np.ndarray:
        """Raw bytes (any shape, a whole number of blocks) as a structured array, shape (n_blocks,)."""
        raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        return raw.view(cls.block_dtype)

    @classmethod
    def dequantize(cls, raw: np.ndarray) -> np.ndarray:
        """Raw blocks (uint8, n_blocks * type_size bytes) -> float32, shape (n_blocks * block_size,)."""
        out = cls.dequantize_blocks(cls.blocks(raw))
        return out.astype(np.float32, copy=False).reshape(-1)

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        """Structured blocks, shape (n_blocks,) -> float32, shape (n_blocks, block_size)."""
        raise NotImplementedError

    @classmethod
    def quantize(cls, x: np.ndarray) -> np.ndarray:
        """float32 values (size a multiple of block_size) -> raw bytes, shape (n_blocks * type_size,)."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, cls.block_size)
        blocks = cls.quantize_blocks(x)
        assert blocks.dtype == cls.block_dtype
        return blocks.view(np.uint8).reshape(-1)

    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        """float32, shape (n_blocks, block_size) -> structured blocks, shape (n_blocks,)."""
        raise NotImplementedError(f"quantizing to {cls.ggml_type.name} is not implemented")


# -- helpers shared by the formats ---------------------------------------------------------------------


def f16_field(b: np.ndarray, name: str) -> np.ndarray:
    """An fp16 scale field of every block as float32, shape (n_blocks, 1) (GGML_FP16_TO_FP32)."""
    return b[name].astype(np.float32).reshape(-1, 1)


def nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes (n_blocks, ..., n) -> 4-bit values (n_blocks, ..., 2n): all low nibbles, then all high ones.

    This is how ggml packs 4-bit quants: byte j holds value j in its low half and value j + n in its
    high half.
    """
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def bits(x: np.ndarray, n: int) -> np.ndarray:
    """Unsigned integers (...,) -> their n low bits, bit 0 first, as uint8 0/1 of shape (..., n)."""
    shifts = np.arange(n, dtype=x.dtype)
    return ((x[..., None] >> shifts) & 1).astype(np.uint8)


def block_absmax(x: np.ndarray) -> np.ndarray:
    """Per block (row of x), the value of largest magnitude, keeping its sign; the first one on ties.

    Matches the `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` loop of ggml's reference quantizers.
    Shape (n_blocks, block_size) -> (n_blocks, 1).
    """
    i = np.abs(x).argmax(axis=-1)[:, None]
    return np.take_along_axis(x, i, axis=-1)


def inverse_or_zero(d: np.ndarray) -> np.ndarray:
    """`d ? 1.0f/d : 0.0f`, elementwise in float32."""
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf (halves away from zero). Done in float64, where x + 0.5 is exact for any float32 x."""
    x = x.astype(np.float64)
    return np.trunc(x + np.copysign(0.5, x))
