"""`edgeinfer serve MODEL --replicas N`: replicas on Ray Serve (edgeinfer/server/ray_serve.py).

One local Ray cluster for the module (Ray starts slowly): 2 replicas of SmolLM2, one thread each,
behind the ingress, against the official `openai` client; the single-machine server (server/app.py
over a BatchRunner, in this process) is the yardstick. Skipped where `ray` is not installed
(pip install -e '.[test,ray]').
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
import httpx  # noqa: E402
import openai  # noqa: E402

from edgeinfer.server import ray_serve as RS  # noqa: E402

MODEL = "smollm2-135m"
CTX = 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    import edgeinfer

    edgeinfer.load(MODEL, n_ctx=CTX, n_threads=1)  # fetched once, before the replicas look for it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = RS.build_app(MODEL, replicas=2, threads=1, ctx_size=CTX, parallel=2, max_queue=8)
        serve.run(app, name=RS.APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def single():
    """The single-machine server (server/app.py over a BatchRunner), in a thread of this process."""
    import uvicorn

    import edgeinfer
    from edgeinfer.engine.batch import make_runner
    from edgeinfer.server import create_app

    llm = edgeinfer.load(MODEL, n_ctx=CTX, n_threads=1)
    runner = make_runner(llm, parallel=2, max_queue=8, n_ctx=CTX)
    runner.start()
    app = create_app(llm, runner, model_name=MODEL, n_ctx=CTX)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url + "/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    t.join(timeout=10)
    runner.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def replicas(url: str) -> dict:
    return httpx.get(url + "/replicas", timeout=30).json()


CHATS = [
    [{"role": "user", "content": "Name three colours."}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "What is the capital of France?"}],
]  # fmt: skip


def test_same_answers_as_the_single_server(cluster, single):
    for messages in CHATS:
        got = client(cluster).chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
        want = client(single).chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
        assert got.choices[0].message.content == want.choices[0].message.content
        assert got.choices[0].finish_reason == want.choices[0].finish_reason
        assert got.usage.prompt_tokens == want.usage.prompt_tokens
        assert got.usage.completion_tokens == want.usage.completion_tokens
        stream = client(cluster).chat.completions.create(model=MODEL, messages=messages, max_tokens=24,
                                                         temperature=0, stream=True)  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == want.choices[0].message.content
    got = client(cluster).completions.create(model=MODEL, prompt="The sky is", max_tokens=12, temperature=0, logprobs=2)
    want = client(single).completions.create(model=MODEL, prompt="The sky is", max_tokens=12, temperature=0, logprobs=2)
    assert got.choices[0].text == want.choices[0].text
    assert got.choices[0].logprobs.tokens == want.choices[0].logprobs.tokens
    assert got.choices[0].logprobs.token_logprobs == pytest.approx(want.choices[0].logprobs.token_logprobs, abs=1e-4)


def test_same_errors_and_endpoints(cluster, single):
    bad = [
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": -1},
        {"model": MODEL, "messages": "hi"},
        {"model": MODEL, "prompt": "x " * 1500, "max_tokens": 4},  # longer than the context
    ]
    for body in bad:
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        a = httpx.post(cluster + path, json=body, timeout=30)
        b = httpx.post(single + path, json=body, timeout=30)
        assert (a.status_code, a.json()) == (b.status_code, b.json())
    assert httpx.get(cluster + "/v1/models").json()["data"][0]["id"] == MODEL
    assert httpx.post(cluster + "/tokenize", json={"content": "hello"}).json() == \
        httpx.post(single + "/tokenize", json={"content": "hello"}).json()  # fmt: skip
    metrics = httpx.get(cluster + "/metrics", timeout=30).text
    assert 'edgeinfer_generated_tokens_total{model="smollm2-135m"}' in metrics
    assert 'edgeinfer_runner_replicas{model="smollm2-135m"} 2' in metrics
    assert "edgeinfer_runner_prefix_tokens_reused" in metrics


def test_concurrent_clients_spread_over_both_replicas(cluster):
    before = replicas(cluster)["served"]
    prompts = [f"Write a short line about the number {i}." for i in range(8)]
    results: list = [None] * len(prompts)

    def ask(i):
        r = client(cluster).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompts[i]}],
                                                    max_tokens=16, temperature=0)  # fmt: skip
        results[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results)
    after = replicas(cluster)["served"]
    got = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert sum(got.values()) == len(prompts)
    assert len([k for k, n in got.items() if n > 0]) == 2, got


def test_a_conversation_stays_on_one_replica(cluster):
    for topic in ("rivers", "mountains"):
        conv = [{"role": "system", "content": f"You are a geography tutor. Today's subject is {topic}."}]
        where = []
        for q in ("Name one.", "Where is it?", "How big is it?", "Anything else?"):
            conv.append({"role": "user", "content": q})
            before = replicas(cluster)["served"]
            r = client(cluster).chat.completions.create(model=MODEL, messages=conv, max_tokens=16, temperature=0)
            conv.append({"role": "assistant", "content": r.choices[0].message.content})
            after = replicas(cluster)["served"]
            where += [k for k in after if after[k] != before.get(k, 0)]
        assert len(where) == 4 and len(set(where)) == 1, where
    info = replicas(cluster)
    assert info["routing"]["policy"] == "prefix" and info["routing"]["by_prefix"] >= 6
    assert sum(s["prefix_tokens_reused"] for s in info["replicas"]) > 0


def test_a_client_that_goes_away_frees_its_sequence_on_the_replica(cluster):
    def cancelled() -> int:
        return sum(s["requests_finished"].get("cancelled", 0) for s in replicas(cluster)["replicas"])

    before = cancelled()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count from one to a thousand."}],
            "max_tokens": 600, "temperature": 0, "stream": True, "logit_bias": {"0": -100, "2": -100, "4": -100}}
    with httpx.stream("POST", cluster + "/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():  # the first text (the replica runs it), then the client leaves
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
    deadline = time.time() + 30
    while time.time() < deadline and cancelled() == before:
        time.sleep(0.2)
    # the sequence is freed either way; on a machine so loaded that the reply ran to its end before the
    # disconnect reached the replica, it ended as "length" rather than "cancelled"
    finished = sum(sum(s["requests_finished"].values()) for s in replicas(cluster)["replicas"])
    assert cancelled() == before + 1 or finished > 0
    assert all(s["active"] == 0 for s in replicas(cluster)["replicas"])


def _kill(replica_id: str) -> None:
    ray.kill(ray.get_actor(replica_id, namespace="serve"), no_restart=True)


def test_a_killed_replica_ends_its_stream_with_an_error_and_is_replaced(cluster):
    first = {s["replica"] for s in replicas(cluster)["replicas"]}
    assert len(first) == 2
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a very long story about a dragon."}],
            "max_tokens": 600, "temperature": 0, "stream": True,
            "logit_bias": {"0": -100, "2": -100, "4": -100}}  # never ends by itself  # fmt: skip
    events: list = []
    other: dict = {}
    with httpx.stream("POST", cluster + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:  # the stream has begun: find its replica
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
        busy = [s["replica"] for s in replicas(cluster)["replicas"] if s["active"] > 0]
        assert len(busy) == 1, busy

        def ask():  # another request, on the other replica, while one dies
            c = client(cluster).chat.completions.create(model=MODEL, messages=CHATS[0], max_tokens=24, temperature=0)
            other["text"] = c.choices[0].message.content

        t = threading.Thread(target=ask)
        t.start()
        _kill(busy[0])
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
        t.join(timeout=120)
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])
    assert err["error"]["type"] == "server_error" and "ReplicaFailed" in err["error"]["message"]
    assert other.get("text")  # not lost
    for _ in range(3):  # the ingress goes on serving at once (a request routed to the dead replica is sent again)
        r = client(cluster).chat.completions.create(model=MODEL, messages=CHATS[1], max_tokens=8, temperature=0)
        assert r.choices[0].message.content
    deadline = time.time() + 120  # Ray Serve starts a replacement
    while time.time() < deadline:
        now = {s["replica"] for s in replicas(cluster)["replicas"]}
        if len(now) == 2 and busy[0] not in now:
            break
        time.sleep(1)
    assert len(now) == 2 and busy[0] not in now, now
    r = client(cluster).chat.completions.create(model=MODEL, messages=CHATS[0], max_tokens=8, temperature=0)
    assert r.choices[0].message.content
    assert replicas(cluster)["failures"] >= 1


def test_router_prefers_the_replica_holding_the_prefix():
    """The routing rule alone, without Ray: block hashes name prefixes."""
    a = list(range(100))
    b = list(range(40)) + [7] * 60
    ha, hb = RS.block_hashes(a), RS.block_hashes(b)
    assert len(ha) == 6 and ha[:2] == hb[:2] and ha[2] != hb[2]
    assert RS.block_hashes(list(range(15))) == []


def test_autoscaling_bounds_reach_ray_serve():
    app = RS.build_app(MODEL, replicas=2, threads=1, parallel=3, min_replicas=1, max_replicas=4, routing="round_robin")
    engine = app._bound_deployment.init_args[0]._bound_deployment
    cfg = engine._deployment_config
    auto = cfg.autoscaling_config
    assert (auto.min_replicas, auto.initial_replicas, auto.max_replicas) == (1, 2, 4)
    assert auto.target_ongoing_requests == 3  # queue depth: --parallel requests per replica
    assert engine.ray_actor_options["num_cpus"] == 1
    assert cfg.request_router_config.request_router_kwargs["policy"] == "round_robin"
    with pytest.raises(Exception, match="min-replicas"):
        RS.build_app(MODEL, replicas=2, min_replicas=3, max_replicas=2)


def test_cli_replicas_takes_one_model(capsys):
    from edgeinfer.cli import main

    assert main(["serve", "smollm2-135m", "gemma3-270m", "--replicas", "2"]) == 1
    assert "one model" in capsys.readouterr().err


def test_the_ingress_bounds_what_waits_on_the_replicas():
    """RemoteRunner's own checks, before anything is sent: a full queue (503 + Retry-After in the app),
    a prompt longer than the context or the KV cache, a draft that is not there."""
    from edgeinfer.engine.runner import InvalidPromptError, PromptTooLongError, QueueFullError
    from edgeinfer.engine.sampling import SamplingParams
    from edgeinfer.errors import EdgeInferError

    r = RS.RemoteRunner(None, n_vocab=100, n_ctx=64, kv_cells=32, has_draft=False, max_in_flight=1, per_replica=1,
                        replicas=1)  # fmt: skip
    h = r.submit([1, 2, 3], SamplingParams(temperature=0), 8)
    assert h._payload["hashes"] == RS.block_hashes([1, 2, 3])
    with pytest.raises(QueueFullError) as e:
        r.submit([1, 2, 3], SamplingParams(temperature=0), 8)
    assert e.value.retry_after_s >= 1
    h.cancel()  # frees its place
    r.submit([1, 2, 3], SamplingParams(temperature=0), 8)
    with pytest.raises(PromptTooLongError, match="KV cache"):
        r.check_prompt(list(range(40)))
    with pytest.raises(PromptTooLongError, match="context"):
        r.check_prompt([1] * 64)
    with pytest.raises(InvalidPromptError):
        r.check_prompt([100])
    with pytest.raises(EdgeInferError, match="draft"):
        r.check_speculative("draft")
