"""The low-bit formats (IQ2_XXS .. IQ1_M, TQ1_0, TQ2_0, MXFP4): numpy references against gguf-py's
`gguf.quants.dequantize` (an independent port of ggml's dequantize_row_<type>), bit for bit, on random
blocks (any bytes are a valid block of these formats; fp16 scales and E8M0 exponents drawn sane, and a
few extreme ones), and the grids against ggml's invariants."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import quants as gq
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T

from edgeinfer import quant
from edgeinfer.quant import lowbit

LOWBIT_TYPES = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M, T.TQ1_0, T.TQ2_0, T.MXFP4]


def random_blocks(ggml_type: T, n_blocks: int, seed: int = 0, extreme: bool = False) -> np.ndarray:
    """Random raw blocks (n_blocks, type_size) with their scale fields set to sane values (extreme:
    anything, NaN and inf included)."""
    rng = np.random.default_rng(seed)
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    if extreme:
        return raw
    b = raw.reshape(-1).view(quant.get_format(ggml_type).block_dtype)
    if "d" in b.dtype.names:
        b["d"] = (rng.standard_normal(n_blocks) * 0.01).astype(np.float16)
    if ggml_type == T.MXFP4:
        b["e"] = rng.integers(112, 128, n_blocks)
    if ggml_type == T.IQ1_M:  # the fp16 scale lives in the top nibbles of the four scale words
        h = (rng.standard_normal(n_blocks) * 0.01).astype(np.float16).view(np.uint16).astype(np.uint16)
        for k in range(4):
            b["scales"][:, k] = (b["scales"][:, k] & 0x0FFF) | (((h >> (4 * k)) & 0xF) << 12)
    return raw


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("ggml_type", LOWBIT_TYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf_py_bit_for_bit(ggml_type, extreme):
    block_size, _ = GGML_QUANT_SIZES[ggml_type]
    raw = random_blocks(ggml_type, 300, seed=int(ggml_type), extreme=extreme)
    with np.errstate(all="ignore"):
        ours = quant.dequantize(raw, ggml_type, (300 * block_size,))
        theirs = gq.dequantize(raw, ggml_type).reshape(-1).astype(np.float32)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    if not extreme:
        assert np.isfinite(ours).all() and np.abs(ours).max() > 0


def test_tables():
    # every IQ2 grid value is one of 0x08, 0x19, 0x2b (1, 3, 5 times 8 + ...); IQ1S entries are -1, 0, 1
    for g in (lowbit.GRID_IQ2XXS, lowbit.GRID_IQ2XS, lowbit.GRID_IQ2S):
        assert set(np.unique(g)) == {0x08, 0x19, 0x2B}
    assert set(np.unique(lowbit.GRID_IQ1S)) == {-1, 0, 1}
    assert lowbit.GRID_IQ3XXS.max() <= 62 and lowbit.GRID_IQ3S.max() <= 15
    assert [len(g) for g in (lowbit.GRID_IQ2XXS, lowbit.GRID_IQ2XS, lowbit.GRID_IQ2S, lowbit.GRID_IQ3XXS,
                             lowbit.GRID_IQ3S, lowbit.GRID_IQ1S)] == [256, 512, 1024, 256, 512, 2048]  # fmt: skip
    # the sign table: 7 stored bits, the 8th keeps the number of minus signs even
    assert all(bin(int(s)).count("1") % 2 == 0 for s in lowbit.KSIGNS_IQ2XS)


def test_supported_and_not_quantizable():
    for t in LOWBIT_TYPES:
        assert quant.is_supported(t) and t not in quant.QUANTIZABLE_TYPES
