"""Matmul kernels: the native (C) backend against the Numba backend on the real models' tensors.

    python bench/bench_kernels.py [--tokens 1 512] [--threads 1 2] [--repeat 7] [--quick]

For each distinct (weight type, shape) of SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M (the output /
embedding matrix too), y = x @ W.T for 1 token (a decode step: bound by memory bandwidth) and 512 tokens
(a prefill), on 1 and 2 threads: microseconds per call (best of --repeat, the two backends alternating)
and the weight bytes read per second. Then a per-model total: one pass of every matrix of the model
(what a decode step or a pp512 step spends in matmuls), as time and as tokens/s, for both backends.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeinfer.gguf import GGUFFile  # noqa: E402
from edgeinfer.kernels.base import QTensor  # noqa: E402
from edgeinfer.kernels.native import NativeBackend, native_isa  # noqa: E402
from edgeinfer.kernels.numba import NumbaBackend  # noqa: E402

MODELS = {
    "smollm2-135m": "/work/models/smollm2-135m-q4_1.gguf",
    "gemma3-270m": "/work/models/gemma3-270m-q4_k_m.gguf",
}


def tensors(path: str) -> list[tuple[QTensor, int]]:
    """One tensor per distinct (type, shape) and how many the model has."""
    f = GGUFFile(path)
    seen: dict[tuple, list] = {}
    for t in f.tensors.values():
        if len(t.ne) == 2:
            seen.setdefault((t.ggml_type, tuple(t.ne)), []).append(t)
    return [(QTensor.from_tensor_info(ts[0]), len(ts)) for ts in seen.values()]


def best_time(fn, repeat: int, min_time: float) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = min(best, elapsed / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 512])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per timing sample")
    ap.add_argument("--skip-output", action="store_true", help="leave out the (large) output matrix")
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, native ISA {native_isa()}")
    rng = np.random.default_rng(0)
    for name in args.models:
        items = tensors(MODELS.get(name, name))
        if args.skip_output:
            items = [(w, n) for w, n in items if w.n_rows < 32768]
        for n_threads in args.threads:
            backends = {"native": NativeBackend(n_threads), "numba": NumbaBackend(n_threads)}
            for n_tokens in args.tokens:
                print(f"\n## {name}, {n_tokens} token(s), {n_threads} thread(s)")
                print(f"{'tensor':28s} {'type':6s} {'rows x cols':>13s} {'count':>5s} | "
                      f"{'native us':>10s} {'GB/s':>6s} | {'numba us':>10s} {'GB/s':>6s} | speedup")
                totals = dict.fromkeys(backends, 0.0)
                for w, count in items:
                    x = rng.standard_normal((n_tokens, w.n_cols)).astype(np.float32)
                    out = np.empty((n_tokens, w.n_rows), np.float32)
                    big = w.n_rows >= 32768 and n_tokens > 1
                    xs = x[:64] if big else x  # the output matrix in a prefill: 64 tokens, scaled up
                    os_ = out[: len(xs)]
                    times = {}
                    for bname, b in backends.items():
                        times[bname] = best_time(lambda b=b: b.matmul(w, xs, os_), args.repeat, args.min_time)
                        if big:
                            times[bname] *= n_tokens / len(xs)
                        totals[bname] += times[bname] * count
                    gbs = {k: w.raw.nbytes / v / 1e9 for k, v in times.items()}
                    print(f"{w.name[:28]:28s} {w.ggml_type.name:6s} {w.n_rows:6d} x {w.n_cols:5d} {count:5d} | "
                          f"{times['native'] * 1e6:10.1f} {gbs['native']:6.1f} | {times['numba'] * 1e6:10.1f} "
                          f"{gbs['numba']:6.1f} | {times['numba'] / times['native']:5.2f}x")
                tps = {k: n_tokens / v for k, v in totals.items()}
                print(f"{'all matrices, one pass':28s} {'':6s} {'':13s} {'':5s} | {totals['native'] * 1e3:8.2f}ms "
                      f"{'':6s} | {totals['numba'] * 1e3:8.2f}ms {'':6s} | {totals['numba'] / totals['native']:5.2f}x"
                      f"   (matmul-only tokens/s: native {tps['native']:.0f}, numba {tps['numba']:.0f})")


if __name__ == "__main__":
    main()
