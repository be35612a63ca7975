"""The native CPU backend: quantized matmuls and attention in C (native/*.c, the extension
edgeinfer._native) with AVX-512 VNNI, AVX-VNNI or AVX2/FMA/F16C (x86-64), NEON with smmla, sdot or neither (ARM)
or portable scalar code, chosen once per process (ISA_PATHS), on a persistent thread pool.

It computes exactly what the Numba backend computes (activations quantized once per matmul to the
8-bit format ggml pairs with the weight type, int32 block dots, float scales), only faster; weight
types without a C kernel (Q2_K, Q3_K, BF16) and every other operation but attention (get_rows,
dequantize, the small ops) come from NumbaBackend. IQ4_XS has C kernels only for the x8 layout (every
kernel set has one; `supports()` is False, `x8_preferred()` True): it runs in C once repacked, the
default, and in Numba with EDGEINFER_REPACK=0. The extension is built by `pip install` when a C compiler
is there; `available()` says whether it was.
"""

from __future__ import annotations

import mmap
import os
import platform
import sys
import weakref

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

try:
    from ... import _native
except ImportError as e:  # not built (no C compiler at install time)
    _native = None
    _IMPORT_ERROR: ImportError | None = e
else:
    _IMPORT_ERROR = None

# With the C kernels, Numba's OpenMP threads only run the small ops of a prefill, between products
# on the C pool. OpenMP's default is to spin ~300k iterations after each region, against the pool's
# threads on a small machine: a short spin pays in prefill (README, Measured). Only when nobody chose
# an OpenMP policy, and before Numba starts its threads (importing numba.matmul below); taken out of
# the environment again after, so child processes and the user's view of it are as they were.
_OWN_SPIN = (
    _native is not None
    and "GOMP_SPINCOUNT" not in os.environ
    and "OMP_WAIT_POLICY" not in os.environ
    and "edgeinfer.kernels.numba.matmul" not in sys.modules
)
if _OWN_SPIN:
    os.environ["GOMP_SPINCOUNT"] = "1000"

from ...errors import EdgeInferError  # noqa: E402
from ..base import QTensor  # noqa: E402
from ..numpy_ops import kv_head_dim  # noqa: E402
from ..numba import NumbaBackend  # noqa: E402
from ..numba import matmul as _nm  # noqa: E402

if _OWN_SPIN:
    os.environ.pop("GOMP_SPINCOUNT", None)

BUILD_HINT = (
    "reinstall edgeinfer with a C compiler present (`pip install -e .` in a checkout, or "
    "`pip install --force-reinstall --no-binary edgeinfer edgeinfer`); it builds the extension "
    "edgeinfer._native from native/*.c"
)


class NativeUnavailableError(EdgeInferError, ImportError):
    """The C extension edgeinfer._native was not built."""


def available() -> bool:
    """Whether the C extension is built and importable."""
    return _native is not None


# What each kernel set runs, for `edgeinfer info --system`: the repacked (x8) tiles' dot product, and how
# the set was verified where this project has not run it on such a CPU.
ISA_PATHS = {
    "avx512vnni": "x8 tiles: AVX-512 VNNI vpdpbusd on 256-bit vectors (verified through emulation, "
    "tests/test_isa_emulated.py, not yet on hardware); other types: AVX2",
    "avxvnni": "x8 tiles: AVX-VNNI {vex} vpdpbusd (verified through emulation, tests/test_isa_emulated.py, "
    "not yet on hardware); other types: AVX2",
    "avx2": "x8 tiles: AVX2 vpmaddubsw / vpmaddwd",
    "neon_i8mm": "x8 tiles: NEON smmla (i8mm) for 2-4 tokens, sdot by element for one (verified under qemu "
    "and emulation, tests/test_isa_emulated.py, not yet on hardware); Q4_0 / Q8_0 plain rows: NEON",
    "neon_dotprod": "x8 tiles: NEON sdot by element (verified under qemu and emulation, tests/test_isa_emulated.py, "
    "not yet on hardware); Q4_0 / Q8_0 plain rows: NEON",
    "neon": "x8 tiles: NEON smull / addp / sadalp (verified under qemu and emulation, not yet on hardware); "
    "Q4_0 / Q8_0 plain rows: NEON",
    "scalar": "portable C (the x8 kernels' reference)",
}


def native_isa() -> str:
    """The kernel set the C code uses here: one of isas() ("avx512vnni", "avxvnni", "avx2", "neon_i8mm",
    "neon_dotprod", "neon", "scalar"), chosen once per process from the CPU's features, best first;
    EDGEINFER_ISA (one of isas()) overrides the choice, e.g. EDGEINFER_ISA=scalar."""
    return _require().isa()


def isas() -> list[str]:
    """The kernel sets this CPU can run, best first ("scalar" always last)."""
    return _require().isas()


def system_report() -> dict:
    """What the native backend found and chose here: CPU model, features, the ISAs it can run, the one
    in use, and whether weights are repacked (for `edgeinfer info --system` and bench results)."""
    report = {"native_built": available(), "repack": repack_enabled()}
    model = None
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith(("model name", "Model"))), None)
    except OSError:
        pass
    report["cpu"] = model or platform.processor() or platform.machine()
    if _native is not None:
        report.update(isa=_native.isa(), isas=_native.isas(), cpu_features=_native.cpu_features(),
                      isa_requested_unavailable=_native.isa_unavailable())  # fmt: skip
        report["isa_path"] = ISA_PATHS.get(report["isa"])
    else:
        report["why_not_built"] = str(_IMPORT_ERROR)
    return report


def _require():
    if _native is None:
        raise NativeUnavailableError(f"The native backend is not built ({_IMPORT_ERROR}); {BUILD_HINT}.")
    return _native


T = GGMLQuantizationType
NATIVE_TYPES = (
    T.F32, T.F16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL,
)  # fmt: skip
# the low-bit types (native/lowbit.h: scalar and AVX2 kernels, the same bits as kernels/numba/lowbit.py)
LOWBIT_C_TYPES = (T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M, T.TQ1_0, T.TQ2_0, T.MXFP4)
# weight type -> (ggml id, values per block, bytes per block)
_NATIVE = {t: (int(t), *GGML_QUANT_SIZES[t]) for t in NATIVE_TYPES + LOWBIT_C_TYPES}
# types with an x8 layout (native/x8.h): repacked at load by prepare() where the ISA has their kernels
X8_TYPES = (T.Q4_0, T.Q5_0, T.Q8_0, T.IQ4_NL, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS)
del T
_F32 = np.dtype(np.float32)
_empty = np.empty
# id(QTensor) -> (weakref to it, ggml id or -1 (no C kernel), flat weight bytes, n_rows, n_cols): the checks
# of a weight cost more than a small matmul, so they run once per tensor
_PLANS: dict[int, tuple] = {}


def _plan(w: QTensor) -> tuple:
    entry = _NATIVE.get(w.ggml_type)
    if w.layout == "x8":
        plan = (weakref.ref(w), int(w.ggml_type), w.raw.reshape(-1), w.n_rows, w.n_cols, True)
    elif (w.raw.ndim == 2 and w.n_rows > 0 and repack_enabled() and _native.x8_preferred(int(w.ggml_type))
            and w.ggml_type in GGML_QUANT_SIZES):  # fmt: skip
        # a weight nobody prepared (a Mixture of Experts' expert, read only once chosen): repacked on its
        # first product, its file pages released; the QTensor itself stays in the file's layout
        packed = repack_x8(w)
        _release_file_pages(w.raw)
        plan = (weakref.ref(w), int(w.ggml_type), packed.raw.reshape(-1), w.n_rows, w.n_cols, True)
    elif entry is None:
        plan = (weakref.ref(w), -1, None, w.n_rows, w.n_cols, False)
    else:
        type_id, block_size, type_size = entry
        plan = (weakref.ref(w), type_id, _nm._weight_bytes(w, block_size, type_size), w.n_rows, w.n_cols, False)
    _PLANS[id(w)] = plan
    weakref.finalize(w, _PLANS.pop, id(w), None)
    return plan


def _release_file_pages(a: np.ndarray) -> int:
    """MADV_DONTNEED on the whole pages of `a` when it is a view of a read-only file mapping (a GGUF
    tensor): a repacked copy now holds its bytes; reading `a` again faults them back in from the page
    cache. Returns the bytes released (0 for memory that is not a file mapping)."""
    owner = a
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    if not isinstance(owner, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return 0
    start_of_map = np.frombuffer(owner, np.uint8, count=1).__array_interface__["data"][0]
    offset = a.__array_interface__["data"][0] - start_of_map
    page = mmap.PAGESIZE
    start, end = -(-offset // page) * page, (offset + a.nbytes) // page * page
    if end <= start:
        return 0
    try:
        owner.madvise(mmap.MADV_DONTNEED, start, end - start)
    except (OSError, ValueError):
        return 0
    return end - start


def repack_enabled() -> bool:
    """Whether prepare() repacks weights at load (EDGEINFER_REPACK=0: no; the file's layout is then repacked
    eight rows at a time as each product runs: the same bits, more work per call)."""
    return os.environ.get("EDGEINFER_REPACK", "1").strip().lower() not in ("0", "off", "false", "no")


def repack_x8(w: QTensor, n_threads: int = 1) -> QTensor:
    """w's blocks with its rows interleaved eight at a time (native/x8.h): the same bytes per block,
    (ceil(n_rows / 8) * 8, row_bytes), a partial last group padded with copies of its last row."""
    if w.layout != "plain" or w.raw.ndim != 2 or w.n_rows < 1:
        raise ValueError(f"{w.name}: only a 2-D weight in the file's layout can be repacked")
    flat = _nm._weight_bytes(w, *GGML_QUANT_SIZES[w.ggml_type])  # checked against the shape, contiguous
    packed = np.empty(((w.n_rows + 7) // 8 * 8, w.raw.shape[1]), np.uint8)
    _require().repack(int(w.ggml_type), flat, packed, w.n_rows, w.n_cols, False, n_threads)
    packed.flags.writeable = False
    return QTensor(w.name, w.ggml_type, w.ne, packed, layout="x8")


def unpack_x8(w: QTensor) -> QTensor:
    """The file's layout of a repacked weight (for lookups and dequantization, not for speed)."""
    plain = np.empty((w.n_rows, w.raw.shape[1]), np.uint8)
    _require().repack(int(w.ggml_type), w.raw, plain, w.n_rows, w.n_cols, True)
    return QTensor(w.name, w.ggml_type, w.ne, plain)


def _bad_out(w: QTensor, x: np.ndarray, out) -> ValueError:
    shape = (x.shape[0], w.n_rows)
    return ValueError(
        f"{w.name}: out must be a writeable C-contiguous float32 array of shape {shape}, "
        f"not {getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}."
    )


class NativeBackend(NumbaBackend):
    """Quantized matmuls in C, llama.cpp's way, on `n_threads` threads (default: every available core, or
    EDGEINFER_THREADS); everything else as NumbaBackend."""

    name = "native"

    def __init__(self, n_threads: int | None = None):
        wanted = _require().isa_unavailable()
        if wanted is not None:
            raise EdgeInferError(
                f"EDGEINFER_ISA={wanted} is not an instruction set this CPU can run; choose one of "
                f"{', '.join(_native.isas())} (or unset it to let edgeinfer choose)."
            )
        super().__init__(n_threads)
        # the C pool is not bound by Numba's thread count (NumbaBackend caps n_threads at it)
        if n_threads is not None:
            self.native_threads = int(n_threads)
        else:
            self.native_threads = self.n_threads

    def prepare(self, w: QTensor) -> QTensor:
        """w repacked to the x8 layout (rows interleaved eight at a time) where the ISA in use has x8
        kernels for its type (X8_TYPES on AVX2, and the scalar ISA), else w itself."""
        if (w.layout == "plain" and w.raw.ndim == 2 and w.n_rows > 0 and repack_enabled()
                and _require().x8_preferred(int(w.ggml_type))):  # fmt: skip
            return repack_x8(w, self.native_threads)
        return w

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        return super().get_rows(unpack_x8(w) if w.layout == "x8" else w, ids)

    def dequantize(self, w: QTensor) -> np.ndarray:
        return super().dequantize(unpack_x8(w) if w.layout == "x8" else w)

    def matmul(self, w: QTensor, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """y = x @ W.T: x float32 (n_tokens, n_cols) -> y float32 (n_tokens, n_rows).

        x of another float dtype or layout is converted; `out`, if given, must be a writeable C-contiguous
        float32 (n_tokens, n_rows) and may be x itself. Types without a C kernel go to the Numba one."""
        plan = _PLANS.get(id(w))
        if plan is None or plan[0]() is not w:
            plan = _plan(w)
        _, type_id, flat, n_rows, n_cols, x8 = plan
        if type_id < 0:
            return super().matmul(w, x, out)
        # fast path: the C side checks dtype, rank, shapes, contiguity and byte sizes exactly; anything it
        # refuses goes through the checks and conversions below
        try:
            y = _empty((x.shape[0], n_rows), _F32) if out is None else out
            _native.matmul(type_id, flat, x, y, n_rows, n_cols, self.native_threads, x8)
            return y
        except Exception:
            pass
        if type(x) is not np.ndarray or x.dtype is not _F32 or x.ndim != 2 or x.shape[1] != n_cols:
            x = _nm._activations(w, x)
        if out is None:
            out = np.empty((x.shape[0], n_rows), _F32)
        elif type(out) is not np.ndarray or out.dtype is not _F32 or out.shape != (x.shape[0], n_rows):
            raise _bad_out(w, x, out)
        try:
            _native.matmul(type_id, flat, x, out, n_rows, n_cols, self.native_threads, x8)
        except (BufferError, ValueError):  # numpy: ValueError for a read-only buffer
            if not _nm._writeable_c(out):
                raise _bad_out(w, x, out) from None
            if x.flags.c_contiguous:
                raise
            _native.matmul(type_id, flat, np.ascontiguousarray(x), out, n_rows, n_cols, self.native_threads, x8)
        return out

    def attention(self, q, k, v, q_pos, kv_pos, n_swa: int, scale: float, cells=None) -> np.ndarray:
        """Attention in C on the pool (native/attention.c): q (n, H, D) float32, k (n_cells, Hkv, D), v
        (n_cells, Hkv, Dv) K/V storage (float32, float16, or uint8 rows of Q8_0 blocks, k and v alike),
        C-contiguous, positions and cells int32 -> (n, H * Dv). Other dtypes or layouts go to the Numba op."""
        try:
            out = _empty((q.shape[0], q.shape[1] * kv_head_dim(v)), _F32)
            _native.attention(q, k, v, q_pos, kv_pos, _cells(cells, kv_pos), n_swa, scale, out, self.native_threads)
            return out
        except Exception:
            return super().attention(q, k, v, q_pos, kv_pos, n_swa, scale, cells)

    def attention_many(self, items, n_swa: int, scale: float) -> list[np.ndarray]:
        """attention() of several sequences, items = [(q, k, v, q_pos, kv_pos, cells), ...], in one job on
        the pool (continuous batching): each result is what attention() gives for that sequence alone.
        One sequence goes to attention(), which also splits a token's heads between the threads."""
        if len(items) == 1:
            q, k, v, qp, kp, c = items[0]
            return [self.attention(q, k, v, qp, kp, n_swa, scale, c)]
        try:
            outs = [_empty((it[0].shape[0], it[0].shape[1] * kv_head_dim(it[2])), _F32) for it in items]
            qs, ks, vs, qps, kps, cls = (list(x) for x in zip(*items))
            cls = [_cells(c, kp) for c, kp in zip(cls, kps)]
            _native.attention_many(qs, ks, vs, qps, kps, cls, n_swa, scale, outs, self.native_threads)
            return outs
        except Exception:
            return [self.attention(q, k, v, qp, kp, n_swa, scale, c) for q, k, v, qp, kp, c in items]

    def _attention_c(self, items, n_swa: int, scale: float, sinks, softcap: float) -> list[np.ndarray]:
        """attention_many()'s C call with the extra arguments of attention_sinks() / attention_softcap();
        one sequence also splits a token's heads between the threads. Raises what the C side refuses."""
        outs = [_empty((it[0].shape[0], it[0].shape[1] * kv_head_dim(it[2])), _F32) for it in items]
        qs, ks, vs, qps, kps, cls = (list(x) for x in zip(*items))
        cls = [_cells(c, kp) for c, kp in zip(cls, kps)]
        if len(items) == 1:
            _native.attention(qs[0], ks[0], vs[0], qps[0], kps[0], cls[0], n_swa, scale, outs[0],
                              self.native_threads, sinks, softcap)  # fmt: skip
        else:
            _native.attention_many(qs, ks, vs, qps, kps, cls, n_swa, scale, outs, self.native_threads, sinks,
                                   softcap)  # fmt: skip
        return outs

    def attention_sinks(self, items, n_swa: int, scale: float, sinks: np.ndarray) -> list[np.ndarray]:
        """attention_many() with head h's softmax taking one more logit sinks[h] (float32 (H,), gpt-oss), in
        C as attention_many(); what the C side refuses goes to the Numba op."""
        try:
            return self._attention_c(items, n_swa, scale, np.ascontiguousarray(sinks, dtype=_F32), 0.0)
        except Exception:
            return super().attention_sinks(items, n_swa, scale, sinks)

    def attention_softcap(self, items, n_swa: int, scale: float, softcap: float) -> list[np.ndarray]:
        """attention_many() with every score s soft-capped to softcap * tanh(s / softcap) (Gemma 2), in C as
        attention_many(); what the C side refuses goes to the Numba op."""
        try:
            return self._attention_c(items, n_swa, scale, None, softcap)
        except Exception:
            return super().attention_softcap(items, n_swa, scale, softcap)

    def __repr__(self) -> str:
        return f"NativeBackend(n_threads={self.native_threads}, isa={native_isa()!r})"


def _cells(cells, kv_pos) -> np.ndarray:
    """The rows attention reads: the cache's cells, or 0..n_kv-1 when it gets K and V in token order."""
    return np.arange(len(kv_pos), dtype=np.int32) if cells is None else cells


__all__ = [
    "NATIVE_TYPES", "X8_TYPES", "NativeBackend", "NativeUnavailableError", "available", "isas", "native_isa",
    "ISA_PATHS", "repack_enabled", "system_report",
    "repack_x8", "unpack_x8",
]  # fmt: skip
