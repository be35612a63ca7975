"""The machine's memory read ceiling: GB/s of a Numba `prange` float32 sum over ~1 GB, with a given
thread count (DESIGN.md's measure). A decode step of a 1B+ model reads every weight once, so its
tokens/s x bytes read per token, over this, is how close a runtime comes to the hardware.

    python bench/read_ceiling.py [--threads 2] [--gb 1.0] [--reps 5]      # prints one JSON object
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure_read_ceiling(threads: int, gb: float = 1.0, reps: int = 5) -> dict:
    """{"gb_s": best of `reps` sums, "gb_s_all", "threads", "bytes", "threading_layer"}; runs here (the
    caller's process: Numba's threads, a 1 GB array while it runs)."""
    import numba
    import numpy as np

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))

    @numba.njit(parallel=True, fastmath=True, cache=False)
    def total(a):
        s = np.float32(0.0)
        for i in numba.prange(a.size):  # a parallel reduction: each thread sums its range, vectorized
            s += a[i]
        return s

    a = np.ones(int(gb * 1e9) // 4, dtype=np.float32)  # written: every page is real before timing
    total(a[:1024])  # compile
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        total(a)
        seconds.append(time.perf_counter() - start)
    rates = [a.nbytes / s / 1e9 for s in seconds]
    return {"gb_s": max(rates), "gb_s_all": rates, "threads": numba.get_num_threads(), "bytes": a.nbytes,
            "threading_layer": numba.threading_layer()}  # fmt: skip


def measure_in_subprocess(threads: int, gb: float = 1.0, reps: int = 5, python: str | None = None,
                          timeout: float = 300) -> dict:  # fmt: skip
    """measure_read_ceiling in a fresh interpreter (its memory and threads gone after)."""
    out = subprocess.run([python or sys.executable, __file__, "--threads", str(threads), "--gb", str(gb), "--reps", str(reps)],
                         capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"read ceiling failed: {out.stderr.strip()[-1000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="default: every available core")
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    threads = args.threads
    if threads is None:
        import os

        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print(json.dumps(measure_read_ceiling(threads, args.gb, args.reps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
