"""edgeinfer on Ray Serve (edgeinfer/server/ray_serve.py): throughput of 1 vs N replicas, and the
prefix-reuse rate of prefix-aware routing against round robin on a multi-turn chat workload.

    .venv/bin/python bench/bench_ray.py [--model smollm2-135m] [--threads 2] [--clients 8] [--json]

One local Ray cluster. Each configuration is a fresh deployment (fresh replicas, counters from zero),
driven over HTTP by `--clients` concurrent clients with the official openai client:

- throughput: each client sends `--requests` one-turn chats (distinct prompts), max_tokens
  `--max-tokens`, temperature 0; aggregate generated tokens / wall time. 1 replica x `--threads` threads
  against `--replicas` replicas x threads/replicas each (the same cores in all).
- prefix reuse: `--clients` conversations of `--turns` turns run at once (one system prompt for all,
  each turn carries the whole conversation so far); reuse = the replicas' prefix_tokens_reused over
  their prompt_tokens_total (BatchRunner.stats()), for routing "prefix" and "round_robin" (and
  "least_loaded").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

SYSTEM = ("You are a patient tutor for a small team of engineers. Answer clearly, in two or three sentences, "
          "and give one concrete example when it helps.")  # fmt: skip
TOPICS = ["rivers", "volcanoes", "bridges", "compilers", "bees", "glaciers", "railways", "telescopes",
          "tides", "forests", "batteries", "satellites"]  # fmt: skip
FOLLOWUPS = ["Tell me more.", "Why does that matter?", "Give another example.", "Summarise it in one line.",
             "What is a common mistake?", "How would you test it?"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(serve, RS, model, replicas, threads, parallel, routing, ctx):
    app = RS.build_app(model, replicas=replicas, threads=threads, ctx_size=ctx, parallel=parallel, max_queue=16,
                       routing=routing)  # fmt: skip
    serve.run(app, name=RS.APP_NAME, route_prefix="/")


def replica_stats(url):
    import httpx

    return httpx.get(url + "/replicas", timeout=60).json()


def run_clients(n, fn):
    errors: list = []

    def wrap(i):
        try:
            fn(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, errors


def throughput(url, model, clients, requests, max_tokens):
    import openai

    tokens = [0] * clients

    def client(i):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        for k in range(requests):
            r = c.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens, messages=[
                {"role": "user", "content": f"Write a paragraph about {TOPICS[(i + k) % len(TOPICS)]} (client {i}, "
                                            f"request {k})."}])  # fmt: skip
            tokens[i] += r.usage.completion_tokens

    wall, errors = run_clients(clients, client)
    return {"tokens": sum(tokens), "wall_s": round(wall, 2), "tokens_per_s": round(sum(tokens) / wall, 2),
            "errors": errors}  # fmt: skip


def conversations(url, model, clients, turns, max_tokens):
    import openai

    tokens = [0] * clients

    def client(i):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        conv = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Explain how {TOPICS[i % len(TOPICS)]} work."}]  # fmt: skip
        for k in range(turns):
            r = c.chat.completions.create(model=model, messages=conv, max_tokens=max_tokens, temperature=0)
            tokens[i] += r.usage.completion_tokens
            conv.append({"role": "assistant", "content": r.choices[0].message.content})
            conv.append({"role": "user", "content": FOLLOWUPS[(i + k) % len(FOLLOWUPS)]})

    wall, errors = run_clients(clients, client)
    info = replica_stats(url)
    reps = info["replicas"]
    prompt = sum(s["prompt_tokens_total"] for s in reps)
    reused = sum(s["prefix_tokens_reused"] for s in reps)
    return {"prompt_tokens": prompt, "prefix_tokens_reused": reused,
            "reuse_rate": round(reused / prompt, 3) if prompt else 0.0,
            "requests_per_replica": sorted(s["requests_total"] for s in reps),
            "routed_by_prefix": info["routing"]["by_prefix"], "wall_s": round(wall, 2),
            "tokens_per_s": round(sum(tokens) / wall, 2), "errors": errors}  # fmt: skip


def single_server(model, threads, parallel, ctx):
    """`edgeinfer serve` (no Ray) in a subprocess: the yardstick. Returns (url, process)."""
    import subprocess

    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeinfer", "serve", model, "--port", str(port), "-t", str(threads),
                             "--parallel", str(parallel), "--ctx-size", str(ctx), "--max-queue", "32"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return url, proc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads in all (default: the cores)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=3, help="requests per client (throughput)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--turn-tokens", type=int, default=32, help="max_tokens of one turn (prefix reuse)")
    p.add_argument("--parallel", type=int, default=4, help="sequences batched per replica")
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--skip", default="", help="comma-separated: throughput, prefix")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import ray
    from ray import serve

    from edgeinfer.server import ray_serve as RS

    from edgeinfer.models import resolve_model

    resolve_model(args.model)
    ray.init(num_cpus=max(args.threads, args.replicas), include_dashboard=False, log_to_driver=False)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    out: dict = {"model": args.model, "threads": args.threads, "cores": os.cpu_count(), "clients": args.clients}
    skip = set(filter(None, args.skip.split(",")))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        if "throughput" not in skip:
            out["throughput"] = {}
            par = args.parallel * args.replicas
            single_url, proc = single_server(args.model, args.threads, par, args.ctx)
            try:
                throughput(single_url, args.model, 2, 1, 8)
                r = throughput(single_url, args.model, args.clients, args.requests, args.max_tokens)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            r.update(threads=args.threads, parallel=par)
            out["throughput"]["edgeinfer_serve"] = r
            print(f"throughput, edgeinfer serve (no Ray) x {args.threads} threads: {r['tokens_per_s']} tokens/s",
                  file=sys.stderr, flush=True)  # fmt: skip
            for n in (1, args.replicas):
                per = max(1, args.threads // n)
                deploy(serve, RS, args.model, n, per, args.parallel * args.replicas // n, "prefix", args.ctx)
                throughput(url, args.model, 2, 1, 8)  # warm-up: first calls compile nothing, but fill caches
                r = throughput(url, args.model, args.clients, args.requests, args.max_tokens)
                r.update(replicas=n, threads_per_replica=per, parallel_per_replica=args.parallel * args.replicas // n)
                out["throughput"][f"{n}_replicas"] = r
                print(f"throughput, {n} replica(s) x {per} thread(s): {r['tokens_per_s']} tokens/s "
                      f"({r['tokens']} tokens in {r['wall_s']} s)", file=sys.stderr, flush=True)  # fmt: skip
                serve.delete(RS.APP_NAME)
        if "prefix" not in skip:
            out["prefix_reuse"] = {}
            per = max(1, args.threads // args.replicas)
            for routing in ("prefix", "round_robin", "least_loaded"):
                deploy(serve, RS, args.model, args.replicas, per, args.parallel, routing, args.ctx)
                r = conversations(url, args.model, args.clients, args.turns, args.turn_tokens)
                out["prefix_reuse"][routing] = r
                print(f"prefix reuse, {routing}: {r['reuse_rate']:.1%} of {r['prompt_tokens']} prompt tokens "
                      f"(requests per replica {r['requests_per_replica']}, {r['wall_s']} s)", file=sys.stderr,
                      flush=True)  # fmt: skip
                serve.delete(RS.APP_NAME)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
