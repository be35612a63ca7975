"""Load and tokenizer speed of edgeinfer against llama.cpp, measured in the same run.

    python bench/bench_load.py [--models smollm2-135m gemma3-270m] [--llama-python /path/to/python]

edgeinfer side: opening the GGUF file (header walk, metadata, tensor views), building the tokenizer,
and tokenizing a 10,000-word text (first call and warm). llama.cpp side (optional, needs an interpreter
with llama-cpp-python installed, never a dependency of edgeinfer): `Llama(vocab_only=True)` load and
`tokenize` of the same text. Best of --repeat runs each; the machine and commit are printed with the
figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = (
    "The quick brown fox jumps over the lazy dog while 42 programmers debate whether tabs or spaces "
    "matter; naïve café owners in Zürich serve crème brûlée, 東京の天気は晴れです, 서울은 오늘 맑아요, "
    "and emoji 🙂🚀 appear in code like `def f(x): return x**2  # square` or 3.14159 * r ** 2."
).split()


def corpus(n_words: int = 10_000) -> str:
    lines, line = [], []
    for i in range(n_words):
        line.append(WORDS[(i * 7 + i // 13) % len(WORDS)])
        if len(line) == 12:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_edgeinfer(path: str, text: str, repeat: int) -> dict:
    from edgeinfer.gguf import GGUFFile
    from edgeinfer.tokenizer import Tokenizer

    open_s = best(lambda: GGUFFile(path), repeat)
    f = GGUFFile(path)
    build_s = best(lambda: Tokenizer.from_gguf(f), repeat)
    tok = Tokenizer.from_gguf(f)
    start = time.perf_counter()
    ids = tok.encode(text)
    first_s = time.perf_counter() - start
    warm_s = best(lambda: tok.encode(text), repeat)
    return {"open_s": open_s, "tokenizer_build_s": build_s, "encode_first_s": first_s, "encode_warm_s": warm_s, "n_tokens": len(ids)}


LLAMA_SNIPPET = r"""
import json, sys, time
import llama_cpp
path, text, repeat = sys.argv[1], open(sys.argv[2], encoding="utf-8").read(), int(sys.argv[3])
def best(fn):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)
load_s = best(lambda: llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False))
m = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
data = text.encode("utf-8")
t = time.perf_counter(); ids = m.tokenize(data, add_bos=True, special=False); first = time.perf_counter() - t
warm = best(lambda: m.tokenize(data, add_bos=True, special=False))
print(json.dumps({"load_s": load_s, "encode_first_s": first, "encode_warm_s": warm, "n_tokens": len(ids)}))
"""


def bench_llama(python: str, path: str, text_file: Path, repeat: int) -> dict:
    out = subprocess.run(
        [python, "-c", LLAMA_SNIPPET, path, str(text_file), str(repeat)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from edgeinfer.system import available_cpus

    return f"{cpu}, {available_cpus()} cores available, Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--llama-python", help="an interpreter with llama-cpp-python, for the comparison")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--words", type=int, default=10_000)
    args = ap.parse_args()

    from edgeinfer.models import resolve_model

    text = corpus(args.words)
    text_file = Path("/tmp/edgeinfer-bench-corpus.txt")
    text_file.write_text(text, encoding="utf-8")
    print(f"machine: {machine()}\ncommit: {commit()}\ntext: {args.words} words, {len(text)} characters\n")
    for name in args.models:
        path = str(resolve_model(name))
        ours = bench_edgeinfer(path, text, args.repeat)
        print(f"{name}: edgeinfer open {ours['open_s'] * 1e3:.0f} ms, tokenizer build {ours['tokenizer_build_s'] * 1e3:.0f} ms, "
              f"encode first {ours['encode_first_s'] * 1e3:.0f} ms, warm {ours['encode_warm_s'] * 1e3:.0f} ms ({ours['n_tokens']} tokens)")
        if args.llama_python:
            ref = bench_llama(args.llama_python, path, text_file, args.repeat)
            load_ours = ours["open_s"] + ours["tokenizer_build_s"]
            print(f"{name}: llama.cpp vocab load {ref['load_s'] * 1e3:.0f} ms, encode first {ref['encode_first_s'] * 1e3:.0f} ms, "
                  f"warm {ref['encode_warm_s'] * 1e3:.0f} ms ({ref['n_tokens']} tokens)")
            print(f"{name}: ratio llama.cpp/edgeinfer (above 1 = edgeinfer faster): load {ref['load_s'] / load_ours:.2f}x, "
                  f"encode warm {ref['encode_warm_s'] / ours['encode_warm_s']:.2f}x, same token count: {ref['n_tokens'] == ours['n_tokens']}")
        print()


if __name__ == "__main__":
    main()
