"""Every matmul of one decode token, back to back, on the fused weights the model uses (weights streamed
from DRAM, not cache-hot): python bench/bench_decode_matmuls.py native|numba MODEL.gguf [THREADS]."""
import sys, time, numpy as np
from edgeinfer.arch import build_model
from edgeinfer.gguf import GGUFFile
from edgeinfer.kernels import get_backend
name, path = sys.argv[1], sys.argv[2]
threads = int(sys.argv[3]) if len(sys.argv) > 3 else None
b = get_backend(name, n_threads=threads)
m = build_model(GGUFFile(path), b)
ws = []
for blk in m.blocks:
    a, f = blk.attn, blk.ffn
    ws += [a.wqkv.weight if a.wqkv is not None else a.wq.weight, a.wo.weight, f.gate_up.weight if f.gate_up is not None else f.gate.weight, f.down.weight]
ws.append(m.output.weight)
xs = [np.random.rand(1, w.n_cols).astype(np.float32) for w in ws]
outs = [np.empty((1, w.n_rows), np.float32) for w in ws]
tot = sum(w.raw.nbytes for w in ws)
for r in range(3):
    t = time.perf_counter()
    for _ in range(20):
        for w, x, o in zip(ws, xs, outs): b.matmul(w, x, o)
    dt = (time.perf_counter() - t) / 20
    print(f"{name}: all matmuls of a token {dt*1e3:.2f} ms, {tot/dt/1e9:.1f} GB/s ({tot/1e6:.0f} MB)")
