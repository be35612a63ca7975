"""The native low-bit kernels (native/lowbit.h, lowbit_scalar.c, lowbit_avx2.c) on every ISA this CPU runs:
each equals the Numba kernel (kernels/numba/lowbit.py) bit for bit, and the float64 emulation of ggml's
vec_dot (the numpy references) within float rounding, for a decode and several tokens (the 4-token tiles
and the 1..3 left over), several thread counts, rows that do not fill a chunk, random blocks with sane
scales and with special ones (zero, subnormal, the largest fp16, E8M0's ends, and arbitrary bytes where
NaN and inf scales give NaN and inf: the same ones)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T
from test_matmul_lowbit import REL, emulate
from test_quant_lowbit import LOWBIT_TYPES, random_blocks

from edgeinfer import quant
from edgeinfer.kernels.base import QTensor
from edgeinfer.kernels.numba import matmul as nm

native = pytest.importorskip("edgeinfer.kernels.native")
if not native.available():
    pytest.skip("the native extension is not built here", allow_module_level=True)
from edgeinfer import _native  # noqa: E402

ISAS = [isa for isa in ("scalar", "avx2") if isa in native.isas()]


@pytest.fixture(params=ISAS)
def isa(request):
    previous = _native.set_isa(request.param)
    assert _native.isa() == request.param
    yield request.param
    _native.set_isa(previous)


def qtensor(ggml_type: T, raw: np.ndarray, n_rows: int) -> QTensor:
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    raw = raw.reshape(n_rows, -1)
    return QTensor(f"w_{ggml_type.name}", ggml_type, (raw.shape[1] // type_size * block_size, n_rows), raw)


def special_blocks(ggml_type: T, n_blocks: int, seed: int) -> np.ndarray:
    """Random blocks whose scales cycle through special finite values: 0, the smallest subnormal, the
    largest fp16 (and negative), E8M0 0, 1, 2, 127, 200 (MXFP4)."""
    raw = random_blocks(ggml_type, n_blocks, seed=seed)
    b = raw.reshape(-1).view(quant.get_format(ggml_type).block_dtype)
    halves = np.array([0x0000, 0x0001, 0x8001, 0x03FF, 0x7BFF, 0xFBFF, 0x3C00, 0x0400], np.uint16)
    h = halves[np.arange(n_blocks) % len(halves)]
    if ggml_type == T.MXFP4:
        b["e"] = np.array([0, 1, 2, 127, 200, 128, 100], np.uint8)[np.arange(n_blocks) % 7]
    elif ggml_type == T.IQ1_M:
        for k in range(4):
            b["scales"][:, k] = (b["scales"][:, k] & 0x0FFF) | (((h >> (4 * k)) & 0xF) << 12)
    else:
        b["d"] = h.view(np.float16)
    return raw


def activations(n_tokens: int, n_cols: int, seed: int) -> np.ndarray:
    """Normal activations, with one all-zero block of 256 and one very large one where there is room."""
    x = np.random.default_rng(seed).standard_normal((n_tokens, n_cols)).astype(np.float32)
    if n_cols >= 768:
        x[0, 256:512] = 0
        x[-1, 512:768] *= 1e4
    return x


def same_bits(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Equal bits, NaN where NaN (a NaN's payload is not part of the contract)."""
    nan = np.isnan(theirs)
    np.testing.assert_array_equal(np.isnan(ours), nan)
    np.testing.assert_array_equal(np.where(nan, 0, ours).view(np.uint32), np.where(nan, 0, theirs).view(np.uint32))


@pytest.mark.parametrize("ggml_type", LOWBIT_TYPES, ids=lambda t: t.name)
def test_numba_bits_and_the_reference(isa, ggml_type):
    n_rows, n_cols = 37, 2560  # not a whole number of chunks; a decode reduces blocks 8 at a time: 8 + 2
    w = qtensor(ggml_type, random_blocks(ggml_type, n_rows * n_cols // GGML_QUANT_SIZES[ggml_type][0], seed=11), n_rows)
    assert native._plan(w)[1] >= 0, "a low-bit type the native backend hands to Numba"
    x = activations(9, n_cols, seed=int(ggml_type))
    expected = nm.matmul(w, x)
    exact, magnitude = emulate(w, x)
    assert (np.abs(expected - exact) / magnitude).max() < REL
    for n_threads in (1, 2, 3):
        b = native.NativeBackend(n_threads)
        for n_tokens in (1, 2, 3, 4, 5, 9):
            same_bits(b.matmul(w, x[:n_tokens]), expected[:n_tokens])


@pytest.mark.parametrize("extreme", [False, True], ids=["special", "any-bytes"])
@pytest.mark.parametrize("ggml_type", LOWBIT_TYPES, ids=lambda t: t.name)
def test_special_scales(isa, ggml_type, extreme):
    n_rows, n_cols = 16, 2304  # 9 blocks of 256
    n_blocks = n_rows * n_cols // GGML_QUANT_SIZES[ggml_type][0]
    if extreme:
        raw = random_blocks(ggml_type, n_blocks, seed=5, extreme=True)
    else:
        raw = special_blocks(ggml_type, n_blocks, seed=5)
    w = qtensor(ggml_type, raw, n_rows)
    x = activations(6, n_cols, seed=3)
    b = native.NativeBackend(2)
    with np.errstate(all="ignore"):
        expected = nm.matmul(w, x)
        for n_tokens in (1, 3, 6):
            same_bits(b.matmul(w, x[:n_tokens]), expected[:n_tokens])
        if not extreme:
            assert np.isfinite(expected).all()
            exact, magnitude = emulate(w, x)
            assert (np.abs(expected - exact) <= REL * magnitude + 1e-30).all()


def test_every_lowbit_type_has_a_kernel_and_its_sizes():
    x = np.zeros((1, 512), np.float32)
    for t in LOWBIT_TYPES:
        assert t in native.LOWBIT_C_TYPES and _native.supports(int(t))
        block_size, type_size = GGML_QUANT_SIZES[t]
        w = np.zeros(2 * 512 // block_size * type_size, np.uint8)
        _native.matmul(int(t), w, x, np.empty((1, 2), np.float32), 2, 512, 1)  # the C side's block sizes
        with pytest.raises(ValueError, match="do not fit"):
            _native.matmul(int(t), w[:-1], x, np.empty((1, 2), np.float32), 2, 512, 1)
        with pytest.raises(ValueError, match="multiple of"):
            _native.matmul(int(t), w, x[:, :500], np.empty((1, 2), np.float32), 2, 500, 1)


def test_the_grid_header_is_generated_from_iq_grids():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parent / "fixtures" / "make_native_iq_grids.py"
    spec = importlib.util.spec_from_file_location("make_native_iq_grids", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.HEADER.read_text() == mod.render(), "native/iq_grids.h: re-run tests/fixtures/make_native_iq_grids.py"
