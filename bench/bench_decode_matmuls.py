"""The matmuls of one decode token, on the weights the model really runs (stacked, and repacked where the
backend repacks), streamed from DRAM (not cache-hot): GB/s per kind of tensor and for all of them,
beside the machine's read ceiling measured in the same run (bench/read_ceiling.py).

    python bench/bench_decode_matmuls.py MODEL.gguf [--backend native] [--threads 2] [--rounds 5]

A decode step of a 1B+ model reads every weight once, so a matmul's bytes / its time, over the ceiling,
says how close it comes to the hardware. Each kind (attn_qkv, attn_output, ffn_gate_up, ffn_down,
output) is timed over all layers back to back, so its weights do not fit in the caches.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from read_ceiling import measure_read_ceiling  # noqa: E402

from edgeinfer.arch import build_model  # noqa: E402
from edgeinfer.gguf import GGUFFile  # noqa: E402
from edgeinfer.kernels import get_backend  # noqa: E402


def decode_weights(model) -> dict[str, list]:
    """kind -> the QTensors one decode token multiplies, in layer order."""
    kinds: dict[str, list] = {}
    for blk in model.blocks:
        a, f = blk.attn, blk.ffn
        qkv = [a.wqkv] if a.wqkv is not None else [a.wqk, a.wv] if a.wqk is not None else [a.wq, a.wk, a.wv]
        ffn = [f.gate_up] if getattr(f, "gate_up", None) is not None else [f.gate, f.up]
        for kind, lins in (("attn_qkv", qkv), ("attn_output", [a.wo]), ("ffn_gate_up", ffn), ("ffn_down", [f.down])):
            kinds.setdefault(kind, []).extend(lin.weight for lin in lins)
    kinds["output"] = [model.output.weight]
    return kinds


def time_pass(backend, ws, rounds: int) -> float:
    xs = [np.random.default_rng(0).random((1, w.n_cols), dtype=np.float32) for w in ws]
    outs = [np.empty((1, w.n_rows), np.float32) for w in ws]
    for w, x, o in zip(ws, xs, outs):
        backend.matmul(w, x, o)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for w, x, o in zip(ws, xs, outs):
            backend.matmul(w, x, o)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--backend", default="native")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    ceiling = measure_read_ceiling(args.threads)["gb_s"]
    backend = get_backend(args.backend, n_threads=args.threads)
    model = build_model(GGUFFile(args.model), backend)
    rows, total_bytes, total_s = [], 0, 0.0
    for kind, ws in decode_weights(model).items():
        nbytes = sum(w.raw.nbytes for w in ws)
        s = time_pass(backend, ws, args.rounds)
        types = sorted({w.ggml_type.name for w in ws})
        layouts = sorted({w.layout for w in ws})
        rows.append(dict(kind=kind, types=types, layouts=layouts, mb=nbytes / 1e6, ms=s * 1e3, gb_s=nbytes / s / 1e9))
        total_bytes += nbytes
        total_s += s
    isa = getattr(backend, "__repr__", lambda: "")()
    result = dict(model=Path(args.model).name, backend=repr(backend), threads=args.threads, ceiling_gb_s=ceiling,
                  rows=rows, total=dict(mb=total_bytes / 1e6, ms=total_s * 1e3, gb_s=total_bytes / total_s / 1e9))
    if args.json:
        print(json.dumps(result))
        return
    print(f"# {result['model']}, {isa}, {args.threads} threads; read ceiling {ceiling:.1f} GB/s")
    print(f"{'tensor':12s} {'types':12s} {'layout':7s} {'MB':>8s} {'ms':>8s} {'GB/s':>6s} {'of ceiling':>10s}")
    for r in rows + [dict(kind="all", types=[""], layouts=[""], **result["total"])]:
        print(f"{r['kind']:12s} {','.join(r['types']):12s} {','.join(r['layouts']):7s} {r['mb']:8.1f} {r['ms']:8.2f} "
              f"{r['gb_s']:6.1f} {r['gb_s'] / ceiling:9.0%}")


if __name__ == "__main__":
    main()
