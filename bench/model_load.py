"""Time and memory to load and unload each model in the many-model server (server/models.py with the
server's own loader: edgeinfer.load, then a started continuous-batching runner).

    python bench/model_load.py smollm2-135m gemma3-270m [--ctx-size 4096] [--parallel 1] [--repeat 3]

Per model and round: load seconds, unload seconds, the process's resident memory gained by the load, what
the manager counts against --max-memory (file + KV pool), and the resident memory left after the unload.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics

from edgeinfer.server.models import ModelManager, rss_bytes, specs_from, tune_allocator
from edgeinfer.server.multi import make_loader


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--ctx-size", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tune_allocator()  # as `edgeinfer serve` does
    specs = specs_from(args.models)
    warm = ModelManager(specs, make_loader(args.ctx_size, args.parallel), keep_alive=-1, max_models=len(specs))
    for s in specs:  # one load and unload each first: imports and compiled kernels are paid once per process
        warm.load(s.id)
        warm.unload(s.id)
    m = ModelManager(specs, make_loader(args.ctx_size, args.parallel), keep_alive=-1, max_models=len(specs))
    rows = []
    for s in specs:
        loads, unloads, gained, left = [], [], [], []
        for _ in range(args.repeat):
            gc.collect()
            before = rss_bytes()
            e = m.load(s.id)
            loads.append(e.load_s)
            gained.append(rss_bytes() - before)
            memory = e.memory_bytes
            m.unload(s.id)
            unloads.append(e.unload_s)
            left.append(rss_bytes() - before)
        rows.append({"model": s.id, "file_mb": s.size_bytes / 1e6, "load_s": statistics.median(loads),
                     "first_load_s": loads[0], "unload_s": statistics.median(unloads),
                     "rss_gained_mb": statistics.median(gained) / 1e6, "counted_mb": memory / 1e6,
                     "rss_left_after_unload_mb": statistics.median(left) / 1e6})  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"context {args.ctx_size}, parallel {args.parallel}, median of {args.repeat}")
    print("| model | file | load (first) | unload | RSS gained | counted (file + KV) | RSS left after unload |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['file_mb']:.0f} MB | {r['load_s']:.2f} s ({r['first_load_s']:.2f} s) | "
              f"{r['unload_s'] * 1000:.0f} ms | {r['rss_gained_mb']:.0f} MB | {r['counted_mb']:.0f} MB | "
              f"{r['rss_left_after_unload_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
