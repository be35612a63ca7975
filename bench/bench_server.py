"""Aggregate throughput and time to first token of `edgeinfer serve` under 1, 2, 4, 8 concurrent streams.

    python bench/bench_server.py [--model smollm2-135m] [--clients 1 2 4 8] [--max-tokens 128]
        [--requests-per-client 2] [--parallel 8] [--ctx-size 4096] [--url http://127.0.0.1:PORT]

Starts a server (unless --url names a running one), then for each client count N runs N threads that
each send --requests-per-client streaming chat requests one after another (temperature 0, a prompt of
its own each, `max_tokens` fixed, questions that ask for long answers), and reports:
aggregate completion tokens per second (all tokens / wall time of the round), per-stream decode speed,
p50 / p95 time to first token, and the server's /metrics page at the end. Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent

QUESTIONS = [
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how a steam engine works.",
    "Describe the history of the printing press at length.",
    "Write a detailed guide to growing tomatoes.",
    "Explain how the internet works, step by step, in detail.",
    "Write a long letter to a friend about a trip to the mountains.",
    "Describe the water cycle in great detail.",
    "Write an essay about the importance of sleep.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(host: str, port: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection(host, port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become healthy")


def stream_chat(host: str, port: int, question: str, max_tokens: int) -> dict:
    """One streaming chat request: time to first content, tokens, total time."""
    body = json.dumps({
        "model": "x", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
    })  # fmt: skip
    c = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    first = None
    usage = None
    n_chunks = 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        obj = json.loads(data)
        if obj.get("usage"):
            usage = obj["usage"]
        for ch in obj.get("choices", []):
            if ch.get("delta", {}).get("content"):
                n_chunks += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else n_chunks
    return {"ttft": (first or end) - t0, "total": end - t0, "tokens": tokens}


def run_round(host: str, port: int, clients: int, per_client: int, max_tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for k in range(per_client):
            n = i * per_client + k  # every request its own prompt (only the chat template's start is shared)
            q = f"{QUESTIONS[n % len(QUESTIONS)]} (Request {n + 1} of the round with {clients} clients.)"
            res = stream_chat(host, port, q, max_tokens)
            with lock:
                results.append(res)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = sorted(r["ttft"] for r in results)
    per_stream = [r["tokens"] / max(1e-9, r["total"] - r["ttft"]) for r in results if r["tokens"] > 1]
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": sum(r["tokens"] for r in results),
        "wall_s": wall,
        "aggregate_tps": sum(r["tokens"] for r in results) / wall,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))],
        "stream_tps_median": statistics.median(per_stream) if per_stream else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--url", help="a running server (default: start one)")
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx-size", type=int, default=4096)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)

    proc = None
    if args.url:
        u = urlparse(args.url)
        host, port = u.hostname, u.port
    else:
        host, port = "127.0.0.1", free_port()
        cmd = [sys.executable, "-m", "edgeinfer", "serve", args.model, "--port", str(port),
               "--parallel", str(args.parallel), "--ctx-size", str(args.ctx_size)]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        wait_healthy(host, port)
        stream_chat(host, port, "Hi", 8)  # warm-up: compilation, caches
        rows = []
        for n in args.clients:
            row = run_round(host, port, n, args.requests_per_client, args.max_tokens)
            rows.append(row)
            print(f"{n} clients: {row['aggregate_tps']:.1f} tok/s aggregate ({row['tokens']} tokens in {row['wall_s']:.1f} s), "
                  f"per stream {row['stream_tps_median']:.1f} tok/s, TTFT p50 {row['ttft_p50']:.2f} s p95 {row['ttft_p95']:.2f} s",
                  flush=True)  # fmt: skip
        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", "/metrics")
        metrics = c.getresponse().read().decode()
        print("\n/metrics:\n" + metrics)
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "metrics": metrics}, indent=1))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
