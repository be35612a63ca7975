"""Decode steps of several sequences at once (DecoderModel.forward_many), no server, no prefill in the
timing: tokens per second for batches of 1, 2, 4, 8 sequences, alternating rounds, median.

    python bench/bench_batch.py [MODEL] [--batches 1 2 4 8] [--steps 64] [--rounds 5] [--context 32]

This is the figure to set beside llama.cpp's batched decoding (llama-batched-bench's TG speed): every
weight is read once per step for all the sequences, so the gain over one sequence says how far the
batched matmul kernels are from the memory-bound single-token ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeinfer.api import load  # noqa: E402
from edgeinfer.engine.kv_cache import KVCache  # noqa: E402


def rate(model, batch: int, steps: int, context: int, rng) -> float:
    caches = [KVCache.for_model(model, context + steps + 1) for _ in range(batch)]
    model.forward_many([rng.integers(0, model.n_vocab, context).astype(np.int32) for _ in range(batch)], caches)
    tokens = [np.array([int(t)], np.int32) for t in rng.integers(0, model.n_vocab, batch)]
    start = time.perf_counter()
    for _ in range(steps):
        model.forward_many(tokens, caches)
    return batch * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--context", type=int, default=32, help="prompt tokens in each cache before timing")
    ap.add_argument("-t", "--threads", type=int, default=None)
    args = ap.parse_args(argv)
    llm = load(args.model, n_ctx=args.context + args.steps + 1, n_threads=args.threads)
    rng = np.random.default_rng(0)
    for b in args.batches:  # warm-up: compilation, caches
        rate(llm.model, b, 4, args.context, rng)
    res: dict[int, list[float]] = {b: [] for b in args.batches}
    for _ in range(args.rounds):
        for b in args.batches:
            res[b].append(rate(llm.model, b, args.steps, args.context, rng))
    one = res.get(1)
    for b, v in res.items():
        gain = f", {statistics.median(v) / statistics.median(one):.2f}x one sequence" if one and b != 1 else ""
        print(f"batch {b}: {statistics.median(v):.1f} tok/s (rounds {min(v):.1f}-{max(v):.1f}){gain}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
