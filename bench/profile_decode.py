"""Where a decode step's time goes: quantized matmuls (by weight), attention, the other small ops, and
the Python between them; with --prompt N, where a prefill of N tokens' time goes instead.

Every backend call is timed (perf_counter around it, ~0.1 us each); what remains of a step's wall time
is Python: the model's layer code, the KV cache, numpy glue. Decodes --tokens tokens one at a time
after a prompt of --context tokens, after a warm-up, and prints the split per token.

    python bench/profile_decode.py smollm2-135m --backend auto -t 2
    python bench/profile_decode.py REPLICA.gguf --backend native -t 2 --prompt 256 --rounds 5
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeinfer.arch import build_model  # noqa: E402
from edgeinfer.engine.kv_cache import KVCache  # noqa: E402
from edgeinfer.gguf import GGUFFile  # noqa: E402
from edgeinfer.kernels import get_backend  # noqa: E402
from edgeinfer.models import resolve_model  # noqa: E402


class TimedBackend:
    """Wraps a backend: the same results, and the time of each call summed by operation."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)

    def _timed(self, key, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.seconds[key] += time.perf_counter() - t0
        self.calls[key] += 1
        return out

    def prepare(self, w):
        return self.inner.prepare(w)

    def matmul(self, w, x, out=None):
        if w.n_rows > 20000:
            key = "matmul output"
        elif "_exps" in w.name:  # one expert's slice of a MoE layer
            key = f"matmul {w.ggml_type.name} experts"
        else:
            key = f"matmul {w.ggml_type.name}"
        return self._timed(key, self.inner.matmul, w, x, out)

    def get_rows(self, w, ids):
        return self._timed("get_rows", self.inner.get_rows, w, ids)

    def dequantize(self, w):
        return self.inner.dequantize(w)

    def rms_norm(self, x, weight, eps):
        return self._timed("rms_norm", self.inner.rms_norm, x, weight, eps)

    def rope(self, x, positions, cos, sin, n_rot, neox):
        return self._timed("rope", self.inner.rope, x, positions, cos, sin, n_rot, neox)

    def qkv_store(self, *args):
        return self._timed("qkv_store", self.inner.qkv_store, *args)

    def attention(self, q, k, v, q_pos, kv_pos, n_swa, scale, cells=None):
        return self._timed("attention", lambda: self.inner.attention(q, k, v, q_pos, kv_pos, n_swa, scale, cells))

    def attention_many(self, items, n_swa, scale):
        return self._timed("attention", self.inner.attention_many, items, n_swa, scale)

    def glu(self, gu, act):
        return self._timed("glu", self.inner.glu, gu, act)

    def moe_route(self, *args):
        return self._timed("moe_route", self.inner.moe_route, *args)

    def reset(self):
        self.seconds.clear()
        self.calls.clear()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="GGUF path or registry name")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--context", type=int, default=64, help="prompt tokens before the timed decode")
    ap.add_argument("--tokens", type=int, default=64, help="tokens decoded one at a time")
    ap.add_argument("--prompt", type=int, default=0,
                    help="profile a prefill of this many tokens instead (after --context tokens, default 0 then)")
    ap.add_argument("--rounds", type=int, default=3, help="prefills timed (--prompt: the split is their sum)")
    args = ap.parse_args()
    if args.prompt:
        return profile_prompt(args)

    path = resolve_model(args.model)
    backend = TimedBackend(get_backend(args.backend, n_threads=args.threads))
    model = build_model(GGUFFile(path), backend)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.n_vocab, args.context + 2 * args.tokens)

    def run(cache, start):
        t0 = time.perf_counter()
        for i in range(args.tokens):
            model.forward(ids[start + i : start + i + 1], cache, all_logits=False)
        return time.perf_counter() - t0

    cache = KVCache.for_model(model, args.context + 2 * args.tokens + 1)
    model.forward(ids[: args.context], cache, all_logits=False)
    run(cache, args.context)  # warm-up: compiled code loaded, caches and pages touched
    cache.truncate(args.context)
    backend.reset()
    wall = run(cache, args.context)

    n = args.tokens
    per_tok = 1e3 * wall / n
    in_ops = sum(backend.seconds.values())
    print(f"{Path(path).name}: backend {backend.inner!r}, context {args.context}, {n} tokens decoded")
    print(f"  {per_tok:7.3f} ms per token ({n / wall:.1f} tok/s)")
    for key, sec in sorted(backend.seconds.items(), key=lambda kv: -kv[1]):
        ms = 1e3 * sec / n
        us_call = 1e6 * sec / backend.calls[key]
        print(f"  {ms:7.3f} ms  {100 * sec / wall:5.1f}%  {key:<16} {backend.calls[key] // n:4d} calls/token, {us_call:6.1f} us each")
    py = wall - in_ops
    print(f"  {1e3 * py / n:7.3f} ms  {100 * py / wall:5.1f}%  python (layer code, cache, numpy glue)")
    return 0


def profile_prompt(args) -> int:
    path = resolve_model(args.model)
    backend = TimedBackend(get_backend(args.backend, n_threads=args.threads))
    model = build_model(GGUFFile(path), backend)
    ctx = args.context if "--context" in sys.argv else 0
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.n_vocab, ctx + args.prompt)
    cache = KVCache.for_model(model, ctx + args.prompt + 1)

    def run():
        cache.truncate(0)
        if ctx:
            model.forward(ids[:ctx], cache, all_logits=False)
        backend.reset()
        t0 = time.perf_counter()
        model.forward(ids[ctx:], cache, all_logits=False)
        return time.perf_counter() - t0

    run()  # warm-up: compiled code loaded, caches and pages touched
    seconds: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    walls = []
    for _ in range(args.rounds):
        walls.append(run())
        for k, v in backend.seconds.items():
            seconds[k] += v
            calls[k] += backend.calls[k]
    wall = sum(walls)
    n = args.prompt
    print(f"{Path(path).name}: backend {backend.inner!r}, prefill of {n} tokens after {ctx}, {args.rounds} rounds")
    print(f"  {1e3 * wall / args.rounds:8.2f} ms per prefill ({n * args.rounds / wall:.1f} tok/s; "
          f"rounds {', '.join(f'{n / w:.1f}' for w in walls)} tok/s)")
    for key, sec in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {1e3 * sec / args.rounds:8.2f} ms  {100 * sec / wall:5.1f}%  {key:<16} {calls[key] // args.rounds:4d} "
              f"calls, {1e3 * sec / calls[key]:7.3f} ms each")
    py = wall - sum(seconds.values())
    print(f"  {1e3 * py / args.rounds:8.2f} ms  {100 * py / wall:5.1f}%  python (layer code, cache, numpy glue)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
