"""The native x8 kernels alone, with their weights in cache: compute-bound or memory-bound?

    python bench/bench_x8_kernels.py [--types Q4_0 Q4_K Q6_K] [--cols 2048] [--kb 256] [--tokens 1 128]

For each x8 type, a repacked random weight of about --kb KiB (it stays in L2) times 1 token on 1 thread,
called back to back: GB/s of weight bytes per CPU second of this thread (time.thread_time, so another
process on the core does not count). A kernel whose in-cache GB/s is not well above what one core reads
from DRAM (bench/read_ceiling.py with 1 thread) cannot stream at the read ceiling: it is compute-bound.
With --kb 98304 (larger than the L3) the same measure is one core streaming the weight from DRAM.
The call's fixed cost (quantizing x, the Python call) is measured on an 8-row weight and shown; "net"
takes it out. With more tokens (a prefill tile), int8 GOPS (2 x rows x cols x tokens per second) on
--threads threads (wall time, best of --repeat; CPU time on 1 thread).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType as T

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeinfer import quant  # noqa: E402
from edgeinfer.kernels.base import QTensor  # noqa: E402
from edgeinfer.kernels.native import NativeBackend, native_isa, repack_x8  # noqa: E402

TYPES = ("Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q5_0", "IQ4_NL", "IQ4_XS")


def random_x8(ggml_type: T, n_rows: int, n_cols: int, seed: int = 0) -> QTensor:
    """Random blocks with sane fp16 scales (speed does not depend on the values), repacked."""
    rng = np.random.default_rng(seed)
    fmt = quant.get_format(ggml_type)
    n_blocks = n_rows * n_cols // fmt.block_size
    raw = rng.integers(0, 256, n_blocks * fmt.type_size, dtype=np.uint8)
    blocks = raw.view(fmt.block_dtype)
    for name in blocks.dtype.names:
        if blocks.dtype.fields[name][0] == np.dtype("<f2"):
            blocks[name] = (rng.standard_normal(n_blocks) * 0.02).astype(np.float16)
    w = QTensor(f"random {ggml_type.name}", ggml_type, (n_cols, n_rows), raw.reshape(n_rows, -1))
    return repack_x8(w)


def cpu_seconds_per_call(fn, min_time: float, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        n, start = 0, time.thread_time()
        while time.thread_time() - start < min_time:
            fn()
            n += 1
        best = min(best, (time.thread_time() - start) / n)
    return best


def wall_seconds_per_call(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="+", default=list(TYPES))
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--kb", type=int, default=256, help="weight size in KiB (256: in L2; 65536: from DRAM)")
    ap.add_argument("--tokens", nargs="+", type=int, default=[1])
    ap.add_argument("--threads", type=int, default=2, help="threads of the multi-token products (1: CPU time)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    args = ap.parse_args()
    print(f"# native ISA {native_isa()}, {args.cols} columns, ~{args.kb} KiB weights")
    one = NativeBackend(1)
    many = NativeBackend(args.threads)
    rng = np.random.default_rng(1)
    for name in args.types:
        t = T[name]
        fmt = quant.get_format(t)
        row_bytes = args.cols // fmt.block_size * fmt.type_size
        n_rows = max(8, args.kb * 1024 // row_bytes // 8 * 8)
        w, tiny = random_x8(t, n_rows, args.cols), random_x8(t, 8, args.cols)
        for n_tokens in args.tokens:
            x = rng.standard_normal((n_tokens, args.cols)).astype(np.float32)
            out = np.empty((n_tokens, n_rows), np.float32)
            if n_tokens == 1:
                o8 = np.empty((1, 8), np.float32)
                s = cpu_seconds_per_call(lambda: one.matmul(w, x, out), args.min_time, args.repeat)
                s0 = cpu_seconds_per_call(lambda: one.matmul(tiny, x, o8), args.min_time, args.repeat)
                gb, net = w.raw.nbytes / s / 1e9, w.raw.nbytes / max(s - s0, 1e-9) / 1e9
                print(f"{name:7s} 1 token, 1 thread: {s * 1e6:8.1f} us/call {gb:6.1f} GB/s; call cost "
                      f"{s0 * 1e6:5.1f} us; net {net:6.1f} GB/s ({n_rows} x {args.cols}, {w.raw.nbytes >> 10} KiB)")
            else:
                if args.threads == 1:  # CPU time: another process on the core does not count
                    s = cpu_seconds_per_call(lambda: one.matmul(w, x, out), args.min_time, args.repeat)
                else:
                    s = wall_seconds_per_call(lambda: many.matmul(w, x, out), args.repeat)
                gops = 2 * n_rows * args.cols * n_tokens / s / 1e9
                print(f"{name:7s} {n_tokens} tokens, {args.threads} thread(s): {s * 1e3:8.2f} ms {gops:6.1f} GOPS")


if __name__ == "__main__":
    main()
