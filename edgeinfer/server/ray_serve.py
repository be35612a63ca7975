"""edgeinfer past one machine: replicas on Ray Serve behind one OpenAI-compatible ingress.

(The issue calls this `edgeinfer.serve.ray`; the server package is `edgeinfer.server`, so it lives here.)

    edgeinfer serve smollm2-135m --replicas 2                       # a local Ray cluster, 2 replicas
    edgeinfer serve smollm2-135m --replicas 2 --ray-address auto    # join a running cluster (`ray start`)

Two deployments:

- `Engine`: each replica loads the model and runs a BatchRunner (the same continuous batch, paged KV
  cache with prompt-prefix reuse, and speculation as `edgeinfer serve`). Its `generate` streams the
  runner's events (text pieces, then the Finish) back through Ray Serve's streaming responses.
- `Ingress`: the single-machine server's own Starlette app (server/app.py: protocol.py's parsing and
  errors, the same response shaping, SSE, /metrics), built over a `RemoteRunner` instead of a local
  runner. The ingress holds only the tokenizer and chat template (no weights); a RemoteRunner has the
  runner's interface (check_prompt, check_speculative, submit -> handle with events()/cancel(), stats)
  and sends each request to an Engine replica.

Routing (`PrefixAwareRouter`, a Ray Serve request router running in the ingress's process): a prompt is
cut into blocks of 16 tokens, each named by a hash chained over all blocks before it; the router
remembers which blocks it sent to which replica (least recently used first out). A request goes to the
replica holding its longest prefix when that prefix is longer than the least loaded replica's and
that replica is not more than `imbalance` requests busier; otherwise to the least loaded replica (by
Ray Serve's own queue-length probes). So the turns of one conversation, and requests with one system
prompt, land where their KV cache already is. `policy="round_robin"` and `"least_loaded"` exist for
comparison (bench/bench_ray.py).

Faults: a replica that dies before a request has produced text is retried on another replica; one
that dies mid-stream ends that stream with an error event and [DONE] (a non-streamed request: a 500),
and the ingress serves on. Ray Serve replaces the dead replica.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import threading
import time
from collections.abc import Sequence

from ..engine.runner import Finish
from ..engine.spec_policy import MODES
from ..errors import EdgeInferError, PromptTooLongError, QueueFullError

APP_NAME = "edgeinfer"
ENGINE_NAME = "EdgeinferEngine"
INGRESS_NAME = "EdgeinferIngress"
BLOCK_TOKENS = 16  # the router's unit of prefix
_ROUTERS: dict[tuple[str, str], "object"] = {}  # (app, deployment) -> the PrefixAwareRouter in this process
RETRIES = 2  # a request whose replica died before it produced text is sent again, this many times at most


def _ray():
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise EdgeInferError(f"--replicas needs Ray Serve ({e}): pip install 'edgeinfer[ray]'") from None
    return ray, serve


# -- the replica


class Engine:
    """One replica: a loaded model and its BatchRunner. Deployed as ENGINE_NAME (see build_app)."""

    def __init__(self, model: str, ctx_size: int = 4096, threads: int | None = None, parallel: int = 1,
                 max_queue: int = 16, kv_size: int | None = None, draft=None, backend="auto",
                 kv_type: str | None = None):  # fmt: skip
        from ray import serve

        from ..api import load
        from ..engine.batch import make_runner
        from ..nn.kv import DEFAULT_KV_TYPE

        self.llm = load(model, n_ctx=ctx_size, n_threads=threads, backend=backend, draft=draft,
                        kv_type=kv_type or DEFAULT_KV_TYPE, progress=False)  # fmt: skip
        self.runner = make_runner(self.llm, parallel=parallel, max_queue=max_queue, n_ctx=ctx_size, kv_cells=kv_size)
        self.runner.start()
        try:
            self.replica = serve.get_replica_context().replica_id.to_full_id_str()
        except Exception:  # outside Serve (tests of the class itself)
            self.replica = f"local-{os.getpid()}"

    async def generate(self, req: dict):
        """Stream one request: ("text", piece, new logprobs), then ("finish", Finish, replica id); or one
        ("error", kind, message) when the runner refuses it."""
        try:
            h = self.runner.submit(req["prompt_ids"], req["params"], req["max_tokens"], req["stop"],
                                   loop=asyncio.get_running_loop(), speculative=req["speculative"],
                                   grammar=req["grammar"], logprobs=req["logprobs"])  # fmt: skip
        except Exception as e:  # QueueFullError, PromptTooLongError, ...: the ingress checks first, rarely seen
            yield ("error", type(e).__name__, str(e))
            return
        sent = 0
        try:
            async for event in h.events():
                if isinstance(event, Finish):
                    yield ("finish", event, self.replica)
                    return
                new = None
                if h.live_logprobs is not None:
                    new = list(h.live_logprobs[sent:])
                    sent += len(new)
                yield ("text", event, new)
        finally:
            h.cancel()  # a no-op once finished; the ingress cancelled (client gone) otherwise

    def stats(self, req: dict | None = None) -> dict:
        return {**self.runner.stats(), "replica": self.replica, "pid": os.getpid()}

    def __del__(self):
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.stop()


# -- routing


def block_hashes(ids: Sequence[int], block: int = BLOCK_TOKENS) -> list[int]:
    """One hash per full block of `ids`, each chained over every block before it (a prefix's name)."""
    out, h = [], 0
    for i in range(0, len(ids) - block + 1, block):
        h = hash((h, tuple(ids[i:i + block])))
        out.append(h)
    return out


def _payload(pending_request) -> dict | None:
    if pending_request is None:
        return None
    for a in list(pending_request.args or ()) + list((pending_request.kwargs or {}).values()):
        if isinstance(a, dict) and "prompt_ids" in a:
            return a
    return None


try:  # the router class exists only where Ray Serve is installed
    from ray.serve.request_router import RequestRouter as _RequestRouter
except ImportError:  # pragma: no cover - without the extra
    _RequestRouter = object


class PrefixAwareRouter(_RequestRouter):
    """Ray Serve request router: prefix affinity, falling back to the least loaded replica.

    Router kwargs (request_router_kwargs): policy "prefix" (default), "round_robin" or "least_loaded";
    imbalance: how many more ongoing requests the prefix's replica may have than the least loaded one
    before the prefix is given up; index_blocks: prefix blocks remembered per replica."""

    def initialize_state(self, policy: str = "prefix", imbalance: int = 2, index_blocks: int = 8192,
                         block_tokens: int = BLOCK_TOKENS, **_):  # fmt: skip
        self.policy = policy
        self.imbalance = int(imbalance)
        self.index_blocks = int(index_blocks)
        self.block_tokens = int(block_tokens)
        self._index: dict = collections.defaultdict(collections.OrderedDict)  # ReplicaID -> {block hash: None}
        self._rr = 0
        self._ongoing: collections.Counter = collections.Counter()  # ReplicaID -> generation requests running
        self._routed_to: dict = {}  # id(request payload) -> ReplicaID, until the ingress releases it
        self._chosen_by_prefix: dict = {}  # id(request payload) -> the replica chosen for its prefix
        self.routed: collections.Counter = collections.Counter()  # replica id string -> generation requests
        self.prefix_routed = 0  # requests sent where their prefix was
        self._lock = threading.Lock()
        # Ray Serve pickles a router class by value (its module's globals are copies): register in the
        # module the ingress imports
        from edgeinfer.server import ray_serve

        ray_serve._ROUTERS[(self._deployment_id.app_name, self._deployment_id.name)] = self

    def _load(self, rid) -> int:
        """Generation requests this router sent to the replica that have not completed."""
        return self._ongoing.get(rid, 0)  # counted from the choice until the ingress releases it

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        """Ranks of one replica each, the preferred first (Ray Serve takes the first that has room). The
        request counts on the first at once: requests routed at the same moment see each other."""
        if not candidate_replicas:
            return []
        candidates = list(candidate_replicas)
        random.shuffle(candidates)  # ties between equally loaded replicas: no favourite
        req = _payload(pending_request)
        if req is None:
            return [candidates]
        with self._lock:
            self._unreserve(req)  # chosen before (a retry of the choice): counted again below
            loads = {r.replica_id: self._load(r.replica_id) for r in candidates}
            by_load = sorted(candidates, key=lambda r: loads[r.replica_id])
            if self.policy == "round_robin":
                ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.to_full_id_str())
                first = ordered[self._rr % len(ordered)]
                self._rr += 1
            elif self.policy == "least_loaded":
                first = by_load[0]
            else:
                hashes = self._hashes(req)
                matched = {r.replica_id: self._matched(r.replica_id, hashes) for r in candidates}
                # the longest prefix among the replicas at most `imbalance` requests busier than the least loaded
                least = loads[by_load[0].replica_id]
                near = [r for r in by_load if loads[r.replica_id] <= least + self.imbalance]
                best = max(near, key=lambda r: (matched[r.replica_id], -loads[r.replica_id]))
                first = best if matched[best.replica_id] > 0 else by_load[0]
                if matched[best.replica_id] > 0:
                    self._chosen_by_prefix[id(req)] = best.replica_id
            self._ongoing[first.replica_id] += 1
            self._routed_to[id(req)] = first.replica_id
        return [[first]] + [[r] for r in by_load if r is not first]

    def _unreserve(self, req: dict) -> None:
        """(with the lock held) The request no longer counts on the replica it was chosen for."""
        self._chosen_by_prefix.pop(id(req), None)
        rid = self._routed_to.pop(id(req), None)
        if rid is not None and self._ongoing.get(rid, 0) > 0:
            self._ongoing[rid] -= 1

    def _hashes(self, req: dict) -> list[int]:
        if self.block_tokens == BLOCK_TOKENS and req.get("hashes") is not None:
            return req["hashes"]  # made by the ingress (RemoteRunner.submit)
        return block_hashes(req["prompt_ids"], self.block_tokens)

    def _matched(self, rid, hashes: list[int]) -> int:
        index = self._index.get(rid)
        if not index:
            return 0
        n = 0
        for h in hashes:
            if h not in index:
                break
            n += 1
        return n

    def on_request_routed(self, pending_request, replica_id, result) -> None:
        req = _payload(pending_request)
        if req is None or "prompt_ids" not in req:
            return
        with self._lock:
            self.routed[replica_id.to_full_id_str()] += 1
            by_prefix = self._chosen_by_prefix.get(id(req)) == replica_id
            if self._routed_to.get(id(req)) != replica_id:  # not where it was counted (that one was full)
                self._unreserve(req)
                self._ongoing[replica_id] += 1
                self._routed_to[id(req)] = replica_id
            self._chosen_by_prefix.pop(id(req), None)
            if by_prefix:
                self.prefix_routed += 1
            hashes = self._hashes(req)
            index = self._index[replica_id]
            for h in hashes:  # the most recently used last
                index[h] = None
                index.move_to_end(h)
            while len(index) > self.index_blocks:
                index.popitem(last=False)

    def release(self, req: dict) -> None:
        """The ingress's side: the request routed with `req` has ended (Ray Serve's own completion hook
        fires when a streaming call is dispatched, not when its stream ends)."""
        with self._lock:
            self._unreserve(req)

    def on_replica_actor_died(self, replica_id) -> None:
        super().on_replica_actor_died(replica_id)
        with self._lock:
            self._index.pop(replica_id, None)
            self._ongoing.pop(replica_id, None)

    def update_replicas(self, replicas) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id for r in replicas}
        with self._lock:
            for rid in [k for k in self._index if k not in live]:
                del self._index[rid]


ROUTER_PATH = f"{__name__}.PrefixAwareRouter"


# -- the ingress's runner


class ReplicaFailed(EdgeInferError):
    """The replica generating a request died (or became unreachable) after it had sent text."""


class RemoteHandle:
    """A request on a replica, with Handle's consumer side: events() (text pieces, then a Finish),
    cancel() and live_logprobs."""

    def __init__(self, runner: "RemoteRunner", payload: dict):
        self._runner = runner
        self._payload = payload
        self._gen = None
        self._released = False
        self.cancelled = False
        self.live_logprobs: list | None = [] if payload["logprobs"] is not None else None
        self.replica: str | None = None
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        self.cancelled = True
        if self._gen is not None:
            try:
                self._gen.cancel()
            except Exception:
                pass
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._runner._done()

    async def events(self):
        ray, _ = _ray()
        attempt = 0
        try:
            while True:
                if self.cancelled:
                    yield Finish("cancelled", len(self._payload["prompt_ids"]))
                    return
                self._gen = self._runner._engine.options(stream=True).generate.remote(self._payload)
                produced = False
                try:
                    async for item in self._gen:
                        kind = item[0]
                        if kind == "text":
                            if item[2] and self.live_logprobs is not None:
                                self.live_logprobs.extend(item[2])
                            produced = True
                            yield item[1]
                        elif kind == "finish":
                            fin, self.replica = item[1], item[2]
                            self._runner._served(self.replica, fin.total_s)
                            yield fin
                            return
                        else:  # the replica's runner refused it
                            yield Finish("error", len(self._payload["prompt_ids"]), error=f"{item[1]}: {item[2]}")
                            return
                    raise ReplicaFailed("the replica ended the stream without finishing it")
                except ray.exceptions.RayError as e:
                    if self.cancelled:
                        yield Finish("cancelled", len(self._payload["prompt_ids"]))
                        return
                    if produced or attempt >= RETRIES:
                        self._runner.failures += 1
                        raise ReplicaFailed(
                            f"the replica generating this reply failed ({type(e).__name__}); the server is still "
                            "running: send the request again") from None  # fmt: skip
                    attempt += 1
                    self._runner.retries += 1
                    await asyncio.sleep(0.25 * attempt)  # let Ray notice the death before routing again
                except Exception:
                    if self.cancelled:  # the call was cancelled under us (RequestCancelledError)
                        yield Finish("cancelled", len(self._payload["prompt_ids"]))
                        return
                    raise
        finally:
            router = self._runner._router()
            if router is not None:
                router.release(self._payload)
            self._release()


class RemoteRunner:
    """The runner interface of engine/runner.py over Engine replicas (server/app.py's runner)."""

    def __init__(self, engine_handle, n_vocab: int, n_ctx: int, kv_cells: int, has_draft: bool,
                 max_in_flight: int, per_replica: int, replicas: int):  # fmt: skip
        self._engine = engine_handle
        self.n_vocab = n_vocab
        self.n_ctx = n_ctx
        self.kv_cells = kv_cells
        self.has_draft = has_draft
        self.max_in_flight = max_in_flight  # the ingress's queue bound, None: per_replica x replicas
        self.per_replica = per_replica
        self.replicas = replicas
        self.in_flight = 0
        self.retries = 0
        self.failures = 0
        self._served_by: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self._mean_s = 0.0
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    # the same checks as BatchRunner's, before anything is sent
    def check_prompt(self, prompt_ids: Sequence[int]) -> None:
        from ..engine.core import check_prompt

        check_prompt(prompt_ids, self.n_vocab, self.n_ctx, hint="start the server with a larger --ctx-size")
        if len(prompt_ids) >= self.kv_cells:
            raise PromptTooLongError(
                f"The prompt is {len(prompt_ids)} tokens long but the server's KV cache holds {self.kv_cells} "
                "(and needs room for at least one generated token): shorten the prompt or start the server "
                "with a larger --kv-size."
            )

    def check_speculative(self, mode: str | None) -> None:
        if mode not in ("auto", *MODES, None):
            raise EdgeInferError(f"speculative must be 'auto', 'draft', 'ngram' or None, got {mode!r}.")
        if mode == "draft" and not self.has_draft:
            raise EdgeInferError("speculative 'draft' needs a draft model: start the server with --draft MODEL.")

    def _router(self):
        return _ROUTERS.get((self._engine.app_name, self._engine.deployment_name))

    def _live_replicas(self) -> list[str]:
        router = self._router()
        if router is None:
            return []
        return sorted(r.to_full_id_str() for r in router.curr_replicas)

    def _limit(self) -> int:
        if self.max_in_flight is not None:
            return self.max_in_flight
        return self.per_replica * max(1, len(self._live_replicas()) or self.replicas)

    def submit(self, prompt_ids: Sequence[int], params, max_tokens: int, stop: Sequence[str] = (),
               loop=None, speculative: str | None = None, grammar=None,
               logprobs: int | None = None) -> RemoteHandle:  # fmt: skip
        prompt_ids = [int(t) for t in prompt_ids]
        self.check_prompt(prompt_ids)
        params.validate(self.n_vocab)
        self.check_speculative(speculative)
        with self._lock:
            limit = self._limit()
            if self.in_flight >= limit:
                wait = max(1.0, min(60.0, (self._mean_s or 1.0) * self.in_flight / max(1, limit)))
                raise QueueFullError(f"{self.in_flight} requests are already running or waiting on the replicas; "
                                     f"try again in about {round(wait)} s.", retry_after_s=wait)  # fmt: skip
            self.in_flight += 1
        payload = {"prompt_ids": prompt_ids, "params": params, "max_tokens": int(max_tokens), "stop": list(stop),
                   "speculative": speculative, "grammar": grammar, "logprobs": logprobs,
                   "hashes": block_hashes(prompt_ids)}  # for the router  # fmt: skip
        return RemoteHandle(self, payload)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _served(self, replica: str, seconds: float) -> None:
        with self._lock:
            self._served_by[replica] += 1
            self._mean_s = seconds if not self._mean_s else 0.8 * self._mean_s + 0.2 * seconds

    # -- the replicas' counters
    async def areplica_stats(self, timeout_s: float = 5.0) -> list[dict]:
        """runner.stats() of each live replica (Ray Serve's broadcast), on the ingress's loop; a replica
        that is dead or starting is left out."""
        try:
            got = await self._engine.broadcast("stats").results_async(timeout_s=timeout_s, return_exceptions=True)
        except Exception:
            return []
        return sorted((s for s in got if isinstance(s, dict)), key=lambda s: s["replica"])

    def replica_stats(self, timeout_s: float = 5.0) -> list[dict]:
        """areplica_stats() from another thread (server/app.py renders /metrics in a worker thread): Ray
        Serve handles route on the event loop they were made on."""
        loop = self.loop
        if loop is None:
            return asyncio.run(self.areplica_stats(timeout_s))
        return asyncio.run_coroutine_threadsafe(self.areplica_stats(timeout_s), loop).result(timeout_s + 5)

    def stats(self) -> dict:
        """The replicas' counters summed (what /metrics shows), with replica counts of the ingress's own."""
        return self.summed(self.replica_stats())

    def summed(self, per: list[dict]) -> dict:
        out: dict = {"requests_finished": {}}
        for s in per:
            for k, v in s.items():
                if k == "requests_finished":
                    for reason, n in v.items():
                        out["requests_finished"][reason] = out["requests_finished"].get(reason, 0) + n
                elif k == "uptime_s":
                    out[k] = max(out.get(k, 0.0), v)
                elif isinstance(v, (int, float)) and not isinstance(v, bool) and k != "pid":
                    out[k] = out.get(k, 0) + v
        out.setdefault("queue_depth", 0)
        out["replicas"] = len(per)
        out["ingress_in_flight"] = self.in_flight
        out["replica_retries_total"] = self.retries
        out["replica_failures_total"] = self.failures
        return out

    def served(self) -> dict:
        with self._lock:
            return dict(self._served_by)


# -- the ingress


def front_llm(model, n_ctx: int):
    """What the ingress needs of a model: its tokenizer and chat template, not its weights."""
    from ..api import LLM
    from ..gguf import GGUFFile
    from ..models import resolve_model
    from ..tokenizer import Tokenizer

    path = resolve_model(model, progress=False)
    gguf = GGUFFile(path)
    return LLM(path, gguf, Tokenizer.from_gguf(gguf), None, n_ctx=n_ctx, n_threads=1)


class Ingress:
    """The HTTP ingress: server/app.py's app over a RemoteRunner. Deployed as INGRESS_NAME."""

    def __init__(self, engine, model: str, ctx_size: int, kv_cells: int, has_draft: bool, per_replica: int,
                 replicas: int, app_kwargs: dict, max_in_flight: int | None = None):  # fmt: skip
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from .app import create_app

        self.llm = front_llm(model, ctx_size)
        self.runner = RemoteRunner(engine, self.llm.n_vocab, ctx_size, kv_cells, has_draft, max_in_flight,
                                   per_replica, replicas)  # fmt: skip
        self.http_app = create_app(self.llm, self.runner, n_ctx=ctx_size, **app_kwargs)
        runner = self.runner

        async def replicas_page(request):
            """Each replica's counters and the routing so far (JSON)."""
            per = await runner.areplica_stats()
            router = _ROUTERS.get((engine.app_name, engine.deployment_name))
            return JSONResponse({
                "replicas": per,
                "served": runner.served(),
                "routing": {"policy": getattr(router, "policy", None),
                            "routed": dict(getattr(router, "routed", {})),
                            "by_prefix": getattr(router, "prefix_routed", 0)},
                "retries": runner.retries, "failures": runner.failures, "in_flight": runner.in_flight,
            })  # fmt: skip

        # inside the guard (API key, request counts): the app's own router takes one more route
        self.http_app.router.routes.append(Route("/replicas", replicas_page, methods=["GET"]))

    def __serve_build_asgi_app__(self):
        return self.http_app


def build_app(model, replicas: int = 1, threads: int | None = None, parallel: int = 1, ctx_size: int = 4096,
              max_queue: int = 16, kv_size: int | None = None, draft=None, backend="auto", kv_type: str | None = None,
              model_name: str | None = None, api_key: str | None = None, max_body_bytes: int | None = None,
              energy_source: str | None = None, speculative: str | None = "auto",
              cors_origins: list[str] | None = None, reasoning_budget: int | None = None,
              min_replicas: int | None = None, max_replicas: int | None = None, routing: str = "prefix",
              imbalance: int = 2, cpus_per_replica: float | None = None):  # fmt: skip
    """The Ray Serve application (Ingress over Engine), ready for serve.run(app, name=APP_NAME,
    route_prefix="/"). threads: each replica's. With min_replicas/max_replicas, Ray Serve's autoscaler
    keeps the replicas between them, aiming at `parallel` ongoing requests per replica (queue depth)."""
    _, serve = _ray()
    from ray.serve.config import RequestRouterConfig

    from .app import DEFAULT_MAX_BODY_BYTES, _model_name

    threads = threads or 1
    per_replica = parallel + max_queue  # requests one replica runs or queues
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    engine_opts: dict = dict(
        name=ENGINE_NAME,
        ray_actor_options={"num_cpus": cpus_per_replica if cpus_per_replica is not None else threads,
                           "runtime_env": {"env_vars": env}},
        max_ongoing_requests=per_replica + 4,  # + room for stats calls; the runner's queue is as large
        request_router_config=RequestRouterConfig(request_router_class=ROUTER_PATH,
                                                  request_router_kwargs={"policy": routing, "imbalance": imbalance}),
        health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=5,
    )  # fmt: skip
    if min_replicas is not None or max_replicas is not None:
        lo = min_replicas if min_replicas is not None else 1
        hi = max_replicas if max_replicas is not None else max(lo, replicas)
        if not 0 <= lo <= hi or hi < 1:
            raise EdgeInferError(f"--min-replicas {lo} / --max-replicas {hi}: need 0 <= min <= max, max >= 1.")
        engine_opts["autoscaling_config"] = {
            "min_replicas": lo, "max_replicas": hi, "initial_replicas": min(max(replicas, lo), hi),
            "target_ongoing_requests": max(1, parallel), "upscale_delay_s": 5, "downscale_delay_s": 60,
        }  # fmt: skip
    else:
        engine_opts["num_replicas"] = replicas
    engine = serve.deployment(Engine).options(**engine_opts).bind(
        str(model), ctx_size=ctx_size, threads=threads, parallel=parallel, max_queue=max_queue + 8,
        kv_size=kv_size, draft=None if draft is None else str(draft), backend=backend, kv_type=kv_type,
    )  # fmt: skip
    app_kwargs = dict(api_key=api_key, model_name=model_name or _model_name(model),
                      max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES, energy_source=energy_source,
                      speculative=speculative, cors_origins=cors_origins, reasoning_budget=reasoning_budget)  # fmt: skip
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name=INGRESS_NAME, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000,
    )  # fmt: skip
    return ingress.bind(engine, str(model), ctx_size, int(kv_size or ctx_size * parallel), draft is not None,
                        per_replica, replicas if engine_opts.get("num_replicas") else max(1, replicas), app_kwargs)


def serve_ray(model, replicas: int = 1, ray_address: str | None = None, host: str = "127.0.0.1", port: int = 8080,
              threads: int | None = None, min_replicas: int | None = None, max_replicas: int | None = None,
              print_fn=print, **kw) -> int:  # fmt: skip
    """`edgeinfer serve MODEL --replicas N`: start a local Ray cluster (or join `ray_address`), deploy
    N replicas and the ingress, listen on host:port until Ctrl-C. threads: in all, split between the
    replicas (default: the machine's cores)."""
    import signal

    ray, serve = _ray()
    from ..models import resolve_model
    from ..system import default_threads

    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise EdgeInferError(f"--replicas must be an integer >= 1, got {replicas!r}.")
    total = threads or default_threads()
    per = max(1, total // replicas)
    if not (os.path.isfile(str(model))):
        resolve_model(model)  # fetch it once here, with a progress bar (each node's replicas read the cache)
    if int(port) == 0:  # Ray Serve's proxy needs a number: pick a free one
        import socket

        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    started = False
    if ray_address:
        ray.init(address=ray_address, ignore_reinit_error=True, log_to_driver=False)
    else:
        cores = max(total, per * max(replicas, max_replicas or 0))
        ray.init(num_cpus=cores, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        started = True
    try:
        serve.start(http_options={"host": host, "port": int(port)})
        app = build_app(model, replicas=replicas, threads=per, min_replicas=min_replicas, max_replicas=max_replicas,
                        **kw)  # fmt: skip
        serve.run(app, name=APP_NAME, route_prefix="/")
        scaling = min_replicas is not None or max_replicas is not None
        bounds = f", autoscaling {min_replicas or 1}..{max_replicas or replicas}" if scaling else ""
        print_fn(f"edgeinfer serve: {model} on Ray Serve listening on http://{host}:{port} ({replicas} replicas x "
                 f"{per} threads{bounds}, parallel {kw.get('parallel', 1)} each, prefix-aware routing); "
                 "Ctrl-C stops", flush=True)  # fmt: skip

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, interrupt)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        # A local cluster goes with its driver (Ctrl-C in a terminal reaches Ray's own processes too, so
        # nothing here may wait on them); a joined cluster keeps running without this application.
        if not started:
            try:
                serve.delete(APP_NAME, _blocking=False)
            except Exception:
                pass
        ray.shutdown()
    print_fn("edgeinfer serve: stopped", flush=True)
    return 0


__all__ = ["Engine", "Ingress", "PrefixAwareRouter", "RemoteRunner", "ReplicaFailed", "block_hashes", "build_app",
           "serve_ray"]
