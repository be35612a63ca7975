"""What a Mixture of Experts costs per token beside a dense model of the same *active* size, in edgeinfer
and in llama.cpp, same run, same machine.

    python bench/bench_moe.py --llama-python /work/llamaenv/bin/python [--dir DIR] \\
        [--n-embd 768] [--n-layer 6] [--n-expert 16] [--n-used 2] [--n-ff-exp 768] \\
        [-p 128] [-n 64] [-r 2] [--rounds 2] [--threads 2]

Writes two random models with tests/' writers (cached in --dir, default ~/.cache/edgeinfer/bench):
a qwen3moe with n_expert experts of n_ff_exp, n_used per token, and a dense qwen3 whose feed-forward is
n_used * n_ff_exp wide: the same attention, the same active feed-forward, everything in Q8_0 (norms and
router in F32), a 512-token placeholder vocabulary (so the output head does not hide the feed-forward).
The MoE file holds n_expert / n_used times the feed-forward weights of the dense one. Then
bench/compare_llamacpp.py times both files with both programs, alternating; this script adds the
figure that matters here: MoE speed / dense speed, for each program. An MoE that reads only its active
experts costs about what the dense model costs (a ratio near 1); one that read every expert would run at
about the ratio of the files' sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def write_pair(directory: Path, n_embd: int, n_layer: int, n_expert: int, n_used: int, n_ff_exp: int):
    from gguf import GGMLQuantizationType as T
    from reference_model import write_tiny_model
    from reference_moe import write_tiny_moe

    directory.mkdir(parents=True, exist_ok=True)
    n_head = max(1, n_embd // 64)
    n_head_kv = max(1, n_head // 4)
    tag = f"e{n_embd}_l{n_layer}_x{n_expert}k{n_used}f{n_ff_exp}"
    moe = directory / f"moe_{tag}.gguf"
    dense = directory / f"dense_{tag}.gguf"
    if not moe.exists():
        print(f"writing {moe} ...", file=sys.stderr, flush=True)
        write_tiny_moe(
            moe.with_suffix(".tmp"), "qwen3moe", T.Q8_0, tokenizer_from=None, n_vocab=512, n_embd=n_embd,
            n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, n_expert=n_expert, n_expert_used=n_used,
            n_ff_exp=n_ff_exp, seed=1,
        )  # fmt: skip
        moe.with_suffix(".tmp").rename(moe)
    if not dense.exists():
        print(f"writing {dense} ...", file=sys.stderr, flush=True)
        write_tiny_model(
            dense.with_suffix(".tmp"), "qwen3", T.Q8_0, tied=False, n_vocab=512, n_embd=n_embd, n_layer=n_layer,
            n_head=n_head, n_head_kv=n_head_kv, n_ff=n_used * n_ff_exp, vocab=True, seed=1,
        )  # fmt: skip
        dense.with_suffix(".tmp").rename(dense)
    return moe, dense


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-python", required=True, help="an interpreter with llama-cpp-python installed")
    ap.add_argument("--dir", type=Path, default=Path.home() / ".cache" / "edgeinfer" / "bench")
    ap.add_argument("--n-embd", type=int, default=768)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-expert", type=int, default=16)
    ap.add_argument("--n-used", type=int, default=2)
    ap.add_argument("--n-ff-exp", type=int, default=768)
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument("-r", "--repetitions", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import compare_llamacpp

    moe, dense = write_pair(args.dir, args.n_embd, args.n_layer, args.n_expert, args.n_used, args.n_ff_exp)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compare.json"
        cmd = ["--llama-python", args.llama_python, "--models", str(moe), str(dense), "--backends", "auto",
               "-p", str(args.n_prompt), "-n", str(args.n_gen), "-r", str(args.repetitions),
               "--rounds", str(args.rounds), "--json", str(out)]  # fmt: skip
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        rc = compare_llamacpp.main(cmd)
        if rc != 0 or not out.exists():
            return rc or 1
        rows = json.loads(out.read_text())["rows"]
    by = {(Path(r["path"]).stem.split("_")[0], r["test"]): r["summary"] for r in rows}
    size = {p.stem.split("_")[0]: p.stat().st_size for p in (moe, dense)}
    print()
    print(f"MoE: {args.n_expert} experts x {args.n_ff_exp}, {args.n_used} per token ({size['moe'] / 2**20:.0f} MiB); "
          f"dense: feed-forward {args.n_used * args.n_ff_exp} ({size['dense'] / 2**20:.0f} MiB); "
          f"n_embd {args.n_embd}, {args.n_layer} layers")  # fmt: skip
    print("| test | edgeinfer MoE / dense | llama.cpp MoE / dense | file size MoE / dense |")
    print("|---|---:|---:|---:|")
    for test in sorted({t for _, t in by}):
        m, d = by[("moe", test)], by[("dense", test)]
        print(f"| {test} | {m['edgeinfer_median'] / d['edgeinfer_median']:.2f} ({m['edgeinfer_median']:.0f} vs {d['edgeinfer_median']:.0f} t/s) "
              f"| {m['llamacpp_median'] / d['llamacpp_median']:.2f} ({m['llamacpp_median']:.0f} vs {d['llamacpp_median']:.0f} t/s) "
              f"| {size['moe'] / size['dense']:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
