"""Decode steps of several sequences at once (DecoderModel.forward_many), no server, no prefill in the
timing: tokens per second for batches of 1, 2, 4, 8 sequences, alternating rounds, median.

    python bench/bench_batch.py [MODEL] [--batches 1 2 4 8] [--steps 64] [--rounds 5] [--context 32]

This is the figure to set beside llama.cpp's batched decoding (llama-batched-bench's TG speed): every
weight is read once per step for all the sequences, so the gain over one sequence says how far the
batched matmul kernels are from the memory-bound single-token ones. With --llama-python (an interpreter
with llama-cpp-python; never a dependency of edgeinfer) llama.cpp decodes the same batches the same way
(one llama_decode per step, a token for each sequence, logits for every row), the two taking turns
--alternations times; the table gives both medians and the ratio edgeinfer / llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeinfer.api import load  # noqa: E402
from edgeinfer.engine.kv_cache import KVCache  # noqa: E402
from edgeinfer.models import resolve_model  # noqa: E402

LLAMA_DRIVER = r'''
import sys, time, json, random, statistics
import llama_cpp as L
path, batches, steps, context, rounds, threads = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], *map(int, sys.argv[3:7])
L.llama_backend_init()
mp = L.llama_model_default_params()
model = L.llama_model_load_from_file(path.encode(), mp)
vocab = L.llama_model_get_vocab(model)
n_vocab = L.llama_vocab_n_tokens(vocab)
Bmax = max(batches)
cp = L.llama_context_default_params()
cp.n_ctx = Bmax * (context + steps + 16)
cp.n_batch = max(512, Bmax * context)
cp.n_ubatch = cp.n_batch
cp.n_seq_max = Bmax
cp.n_threads = threads
cp.n_threads_batch = threads
ctx = L.llama_init_from_model(model, cp)
batch = L.llama_batch_init(cp.n_batch, 0, Bmax)
mem = L.llama_get_memory(ctx)
rng = random.Random(0)

def decode(entries):
    batch.n_tokens = len(entries)
    for i, (t, p, s) in enumerate(entries):
        batch.token[i] = t; batch.pos[i] = p; batch.n_seq_id[i] = 1; batch.seq_id[i][0] = s; batch.logits[i] = 1
    rc = L.llama_decode(ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc}")

def rate(B, n):
    L.llama_memory_clear(mem, True)
    decode([(rng.randrange(n_vocab), p, s) for s in range(B) for p in range(context)])
    start = time.perf_counter()
    for k in range(n):
        decode([(rng.randrange(n_vocab), context + k, s) for s in range(B)])
    return B * n / (time.perf_counter() - start)

for B in batches:
    rate(B, 4)
res = {B: [] for B in batches}
for _ in range(rounds):
    for B in batches:
        res[B].append(rate(B, steps))
print(json.dumps({str(B): statistics.median(v) for B, v in res.items()}))
'''


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
    ap.add_argument("--llama-python", help="also run llama.cpp (an interpreter with llama-cpp-python)")
    ap.add_argument("--alternations", type=int, default=2, help="turns of edgeinfer and llama.cpp")
    args = ap.parse_args(argv)
    from edgeinfer.system import default_threads

    threads = args.threads or default_threads()
    path = resolve_model(args.model)
    llm = load(path, n_ctx=args.context + args.steps + 1, n_threads=threads)
    rng = np.random.default_rng(0)
    for b in args.batches:  # warm-up: compilation, caches
        rate(llm.model, b, 4, args.context, rng)
    ours: dict[int, list[float]] = {b: [] for b in args.batches}
    theirs: dict[int, list[float]] = {b: [] for b in args.batches}
    for _ in range(args.alternations if args.llama_python else 1):
        for _ in range(args.rounds):
            for b in args.batches:
                ours[b].append(rate(llm.model, b, args.steps, args.context, rng))
        if args.llama_python:
            cmd = [args.llama_python, "-c", LLAMA_DRIVER, str(path), ",".join(map(str, args.batches)),
                   str(args.steps), str(args.context), str(args.rounds), str(threads)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            for b, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
                theirs[int(b)].append(v)
    print(f"{path.name}, {threads} threads, {args.steps} decode steps after {args.context} tokens of context")
    one = statistics.median(ours[1]) if ours.get(1) else None
    for b in args.batches:
        med = statistics.median(ours[b])
        line = f"batch {b}: {med:.1f} tok/s (runs {min(ours[b]):.1f}-{max(ours[b]):.1f})"
        if one and b != 1:
            line += f", {med / one:.2f}x one sequence"
        if theirs[b]:
            t = statistics.median(theirs[b])
            line += f" | llama.cpp {t:.1f} tok/s, ratio {med / t:.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
