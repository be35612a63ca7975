"""The low-bit formats' matrix products: Numba against the native kernels (scalar and AVX2), same run.

    python bench/bench_lowbit.py [--rows 2048] [--cols 2048] [--tokens 1] [--threads 1] [--repeat 7]

For each of IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0 and MXFP4: a random weight
of --rows x --cols (sane scales; speed does not depend on the values) times --tokens activations, on the
Numba backend and on the native one with each ISA this CPU runs (switched with set_isa), the three
alternating within every round; best of --repeat rounds, each round calls for at least --min-time s.
Prints one markdown table: weight GB/s (the weight's bytes per call / time), and native AVX2 / Numba.
--clock cpu (the default on one thread, where the caller's thread does all the work) times the calling
thread's CPU time, which a machine shared with other jobs disturbs far less than wall time.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from gguf.constants import GGML_QUANT_SIZES  # noqa: E402
from test_quant_lowbit import LOWBIT_TYPES, random_blocks  # noqa: E402

from edgeinfer import _native  # noqa: E402
from edgeinfer.kernels.base import QTensor  # noqa: E402
from edgeinfer.kernels.native import NativeBackend, isas  # noqa: E402
from edgeinfer.kernels.numba import NumbaBackend  # noqa: E402


def weight(ggml_type, n_rows: int, n_cols: int) -> QTensor:
    block_size, _ = GGML_QUANT_SIZES[ggml_type]
    raw = random_blocks(ggml_type, n_rows * n_cols // block_size, seed=int(ggml_type)).reshape(n_rows, -1)
    return QTensor(f"w_{ggml_type.name}", ggml_type, (n_cols, n_rows), raw)


def timed(fn, min_time: float, clock) -> float:
    n, start = 0, clock()
    while True:
        fn()
        n += 1
        elapsed = clock() - start
        if elapsed >= min_time:
            return elapsed / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.05)
    ap.add_argument("--clock", choices=["cpu", "wall"], default=None, help="default: cpu on one thread, else wall")
    args = ap.parse_args()
    args.clock = args.clock or ("cpu" if args.threads == 1 else "wall")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    numba_b, native_b = NumbaBackend(args.threads), NativeBackend(args.threads)
    native_isas = [isa for isa in ("scalar", "avx2") if isa in isas()]
    x = np.random.default_rng(0).standard_normal((args.tokens, args.cols)).astype(np.float32)
    git = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    print(f"{platform.processor() or platform.machine()}, commit {commit}: {args.rows} x {args.cols} times "
          f"{args.tokens} token(s), {args.threads} thread(s), best of {args.repeat}, {args.clock} time")
    cols = ["numba"] + [f"native {isa}" for isa in native_isas]
    print("\n| format | " + " | ".join(f"{c} GB/s" for c in cols) + " | avx2 / numba |")
    print("|---|" + "---|" * (len(cols) + 1))
    previous = _native.isa()
    try:
        for t in LOWBIT_TYPES:
            w = weight(t, args.rows, args.cols)
            runs = {"numba": lambda: numba_b.matmul(w, x)}
            for isa in native_isas:
                runs[f"native {isa}"] = (lambda isa=isa: (_native.set_isa(isa), native_b.matmul(w, x)))
            for fn in runs.values():
                fn()  # compile / warm up
            best = {c: float("inf") for c in cols}
            for _ in range(args.repeat):
                for c in cols:
                    if c.startswith("native"):
                        _native.set_isa(c.split()[1])
                        best[c] = min(best[c], timed(lambda: native_b.matmul(w, x), args.min_time, clock))
                    else:
                        best[c] = min(best[c], timed(runs[c], args.min_time, clock))
            gbs = {c: w.raw.nbytes / best[c] / 1e9 for c in cols}
            ratio = gbs.get("native avx2", float("nan")) / gbs["numba"]
            print(f"| {t.name} | " + " | ".join(f"{gbs[c]:.2f}" for c in cols) + f" | {ratio:.1f}x |", flush=True)
    finally:
        _native.set_isa(previous)


if __name__ == "__main__":
    main()
