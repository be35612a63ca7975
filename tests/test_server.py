"""`edgeinfer serve`: a real server process on loopback, real HTTP, the official `openai` client.

Two server processes are started per module, each once: the main one (`--parallel 2 --ctx-size 512`)
and a guarded one (`--api-key`, `--max-queue 1`, a small body limit) for the key, queue and size cases.
Every reply is short (max_tokens <= 16, temperature 0) so the whole file runs in well under two minutes.
The request validation and the app's error paths are also tested in-process, without a model.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from edgeinfer.engine.runner import Finish, Handle, QueueFullError
from edgeinfer.engine.sampling import SamplingParams
from edgeinfer.server import RequestError, create_app, parse_chat_request, parse_completion_request
from edgeinfer.server.protocol import parse_json_body, parse_sampling

MODEL = "smollm2-135m"
KEY = "sk-test-edgeinfer"
NO_EOS = {"0": -100, "2": -100}  # <|endoftext|> and <|im_end|>: long replies that never stop early
CHAT = [{"role": "user", "content": "Name three colors."}]


# -- server processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp: Path, *args: str, key: str | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "edgeinfer", "serve", MODEL, "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, timeout=60, headers=self.headers)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the server did not answer /health in time:\n{self.log.read_text()}")
            time.sleep(0.2)

    def client(self, **kw) -> openai.OpenAI:
        kw.setdefault("api_key", "none")
        return openai.OpenAI(base_url=f"{self.url}/v1", max_retries=0, timeout=60, **kw)

    def assert_healthy(self) -> None:
        r = httpx.get(f"{self.url}/health", timeout=10)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert self.proc.poll() is None

    def metrics(self) -> str:
        r = self.http.get("/metrics")
        assert r.status_code == 200
        return r.text

    def stop(self) -> int:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve"), "--parallel", "2", "--ctx-size", "512")
    yield s
    rc = s.stop()
    assert rc == 0, s.log.read_text()
    assert "stopped" in s.log.read_text()


@pytest.fixture(scope="module")
def guarded(smollm2_path, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve"), "--parallel", "1", "--ctx-size", "256", "--max-queue", "1",
               "--api-key", KEY, "--max-body-kb", "64", key=KEY)  # fmt: skip
    yield s
    s.stop()


def _sample(metrics: str, name: str, **labels) -> float:
    """The value of one sample of a Prometheus page (0 when absent)."""
    for line in metrics.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            return float(m.group(4))
    return 0.0


def _wait_for(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def _error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert set(err) >= {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param, err
    return err


# -- the official client


def test_listen_line_and_health(server):
    assert f"listening on http://127.0.0.1:{server.port}" in server.log.read_text()
    assert "in blocks of 32, f16, up to 22 MiB" in server.log.read_text()  # 2 x 512 tokens x 22.5 KiB
    assert server.http.get("/health").json() == {"status": "ok"}


def test_openai_chat(server):
    client = server.client()
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert abs(r.created - time.time()) < 120
    choice = r.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    if u.completion_tokens < 12:
        assert choice.finish_reason == "stop"
    again = client.chat.completions.create(model="anything", messages=CHAT, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == choice.message.content  # temperature 0: deterministic


def test_openai_chat_stream(server):
    client = server.client()
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens

    # raw SSE: data lines, then [DONE]; no usage chunk unless asked
    with server.http.stream("POST", "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4,
                                                                 "temperature": 0, "stream": True}) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] == "length" and "usage" not in last


def test_openai_completions(server):
    client = server.client()
    prompt = "The capital of France is"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    text = r.choices[0].text
    assert text and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8
    ids = server.http.post("/tokenize", json={"content": prompt, "add_special": True}).json()["tokens"]
    assert r.usage.prompt_tokens == len(ids)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == text
    listed = client.completions.create(model=MODEL, prompt=[prompt], max_tokens=8, temperature=0)
    assert listed.choices[0].text == text
    streamed = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text
    assert streamed[-1].choices[0].finish_reason == r.choices[0].finish_reason
    echoed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + text


def test_sampling_fields_reach_the_engine(server):
    client = server.client()
    body = dict(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0.9, top_p=0.9, seed=7,
                extra_body={"top_k": 20, "min_p": 0.1, "repeat_penalty": 1.1})  # fmt: skip
    a = client.completions.create(**body).choices[0].text
    assert client.completions.create(**body).choices[0].text == a  # same seed, same text
    # a stop string is never shown, and ends the reply with "stop"
    full = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    cut = full.choices[0].text.strip().split(",")[1]
    assert cut
    stopped = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[cut])
    assert cut not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"
    # logit_bias: forbid the greedy first token
    first = server.http.post("/tokenize", json={"content": full.choices[0].text}).json()["tokens"][0]
    biased = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=1, temperature=0,
                                       logit_bias={str(first): -100})  # fmt: skip
    assert server.http.post("/tokenize", json={"content": biased.choices[0].text}).json()["tokens"][0] != first


def test_speculative_field(server):
    """Per-request speculation: n-gram drafts give the same text at temperature 0; a draft model this
    server has not loaded, or an unknown mode, is a 400 naming the field."""
    client = server.client()
    prompt = "Repeat exactly: the cat sat on the mat, the cat sat on the mat, the cat sat on the mat."
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    spec = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0,
                                     extra_body={"speculative": "ngram"})  # fmt: skip
    assert spec.choices[0].text == plain.choices[0].text
    assert spec.usage.completion_tokens == plain.usage.completion_tokens
    r = server.http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "speculative": "draft"})
    assert "draft model" in _error(r, 400, "speculative")["message"]
    r = server.http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "speculative": "always"})
    _error(r, 400, "speculative")
    assert server.http.get("/health").status_code == 200


def test_models(server):
    client = server.client()
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_concurrent_clients(server):
    client = server.client()
    prompts = [f"Write one word about {topic}." for topic in ("cats", "rain", "bread", "music")]

    def ask(p):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=8,
                                           temperature=0)  # fmt: skip
        return r.choices[0].message.content

    alone = [ask(p) for p in prompts]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def worker(i: int):
        try:
            results[i] = ask(prompts[i])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert [results[i] for i in range(len(prompts))] == alone  # temperature 0: same text alone or together
    server.assert_healthy()


# -- cancellation


def test_disconnect_mid_stream(server):
    before = _sample(server.metrics(), "edgeinfer_generations_total", reason="cancelled")
    body = {"messages": CHAT, "max_tokens": 400, "temperature": 0, "stream": True, "logit_bias": NO_EOS}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen >= 3:
                    break  # leaving the block closes the connection mid-stream
    assert _wait_for(lambda: _sample(server.metrics(), "edgeinfer_generations_total", reason="cancelled") > before)
    server.assert_healthy()
    r = server.client().chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0)
    assert r.usage.completion_tokens <= 4


def test_disconnect_while_waiting_for_a_full_reply(server):
    before = _sample(server.metrics(), "edgeinfer_generations_total", reason="cancelled")
    body = json.dumps({"messages": CHAT, "max_tokens": 400, "temperature": 0, "logit_bias": NO_EOS}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        time.sleep(0.5)
    assert _wait_for(lambda: _sample(server.metrics(), "edgeinfer_generations_total", reason="cancelled") > before)
    assert _wait_for(lambda: _sample(server.metrics(), "edgeinfer_requests_total", endpoint="/v1/chat/completions",
                                     status="499") >= 1)  # fmt: skip
    server.assert_healthy()


# -- bad requests: each one a 4xx with OpenAI's error JSON, and the server still healthy


@pytest.mark.parametrize("raw", [b"{", b"", b"[1, 2]", b'"hi"', b"\xff\xfe{}", b'{"messages": NaN}', b"null"])
def test_malformed_json(server, raw):
    r = server.http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    err = _error(r, 400)
    assert err["type"] == "invalid_request_error"
    server.assert_healthy()


@pytest.mark.parametrize("field, value", [
    ("temperature", "hot"), ("max_tokens", -1), ("max_tokens", 0), ("max_tokens", 2.5), ("n", 2), ("top_p", 0),
    ("stop", 5), ("seed", -3), ("logit_bias", {"x": 1}), ("messages", "hi"), ("stream", "yes"),
    ("presence_penalty", 9), ("frequency_penalty", "x"),
])  # fmt: skip
def test_wrong_types_and_ranges(server, field, value):
    body = {"messages": CHAT, "max_tokens": 4, "temperature": 0, field: value}
    err = _error(server.http.post("/v1/chat/completions", json=body), 400, param=field)
    assert field in err["message"]
    server.assert_healthy()


def test_wrong_completion_prompts(server):
    for prompt in (5, [], [-1], [1, "a"], ["a", "b"], [10**9]):
        _error(server.http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4}), 400, param="prompt")
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature="hot")
    assert e.value.body["param"] == "temperature"
    server.assert_healthy()


def test_unknown_fields_are_ignored(server):
    body = {"messages": CHAT, "max_tokens": 4, "temperature": 0, "frobnicate": {"deep": [1, 2]}, "user": "me",
            "metadata": {"a": "b"}, "store": False, "max_tokens_per_second": 3}  # fmt: skip
    r = server.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 4


def test_huge_prompt(server):
    words = "lorem ipsum " * 600
    for stream in (False, True):
        body = {"messages": [{"role": "user", "content": words}], "max_tokens": 4, "stream": stream}
        r = server.http.post("/v1/chat/completions", json=body)
        err = _error(r, 400, param="messages")
        assert "context" in err["message"] and err["code"] == "context_length_exceeded"
    r = server.http.post("/v1/completions", json={"prompt": list(range(100, 700)), "max_tokens": 4})
    assert "context" in _error(r, 400, param="prompt")["message"]
    server.assert_healthy()


def test_unknown_endpoint_and_method(server):
    _error(server.http.get("/v1/nothing"), 404)
    _error(server.http.get("/v1/chat/completions"), 405)
    server.assert_healthy()


# -- metrics, tokenize


def test_metrics(server):
    before = server.metrics()
    server.client().chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0)
    server.http.post("/v1/chat/completions", content=b"{")
    page = server.metrics()
    families: dict[str, str] = {}
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families[name] = kind
        elif line.startswith("# HELP "):
            continue
        else:
            m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$', line)
            assert m, f"not Prometheus text: {line!r}"
            value = float(m.group(4))
            assert not math.isnan(value)
            base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
            assert m.group(1) in families or base in families, f"sample without # TYPE: {line!r}"
    assert families["edgeinfer_requests_total"] == "counter"
    for name in ("edgeinfer_queue_depth", "edgeinfer_active_sequences", "edgeinfer_tokens_per_second",
                 "edgeinfer_tokens_per_joule", "edgeinfer_prompt_tokens_total", "edgeinfer_generated_tokens_total"):
        assert name in families, name  # fmt: skip
    ok = {"endpoint": "/v1/chat/completions", "status": "200"}
    assert _sample(page, "edgeinfer_requests_total", **ok) == _sample(before, "edgeinfer_requests_total", **ok) + 1
    bad = {"endpoint": "/v1/chat/completions", "status": "400"}
    assert _sample(page, "edgeinfer_requests_total", **bad) == _sample(before, "edgeinfer_requests_total", **bad) + 1
    assert _sample(page, "edgeinfer_generated_tokens_total") > _sample(before, "edgeinfer_generated_tokens_total")
    assert re.search(r'edgeinfer_tokens_per_joule\{source="(rapl|estimate)",estimated="(true|false)"\} ', page)
    assert _sample(page, "edgeinfer_runner_kv_bytes_total") == 2 * 512 * 30 * 3 * (64 + 64) * 2  # f16 K and V
    if 'source="estimate"' in page:
        assert 'estimated="true"' in page


def test_tokenize_round_trip(server):
    text = "Hello, wörld! 你好 — 12345 <|im_start|>"
    tokens = server.http.post("/tokenize", json={"content": text}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert server.http.post("/detokenize", json={"tokens": tokens}).json() == {"content": text}
    with_bos = server.http.post("/tokenize", json={"content": "Hi", "add_special": True}).json()["tokens"]
    assert len(with_bos) >= 1
    _error(server.http.post("/tokenize", json={"content": 5}), 400, param="content")
    _error(server.http.post("/detokenize", json={"tokens": [1, 10**9]}), 400, param="tokens")
    _error(server.http.post("/detokenize", json={"tokens": "abc"}), 400, param="tokens")
    server.assert_healthy()


# -- the guarded server: API key, queue bound, body limit


def test_api_key(guarded):
    url = guarded.url
    assert httpx.get(f"{url}/health").status_code == 200  # no key needed
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/chat/completions"),
                             ("POST", "/tokenize")):  # fmt: skip
            err = _error(httpx.request(method, f"{url}{path}", headers=headers, json={}), 401)
            assert err["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        guarded.client(api_key="wrong").models.list()
    assert [m.id for m in guarded.client(api_key=KEY).models.list().data] == [MODEL]
    r = guarded.client(api_key=KEY).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0)
    assert r.usage.completion_tokens <= 4
    guarded.assert_healthy()


def test_full_queue(guarded):
    n = 6
    barrier = threading.Barrier(n)
    results: list[httpx.Response | BaseException] = [None] * n  # type: ignore[list-item]

    def fire(i: int):
        body = {"prompt": "1, 2, 3, 4,", "max_tokens": 48, "temperature": 0, "logit_bias": NO_EOS}
        with httpx.Client(base_url=guarded.url, headers=guarded.headers, timeout=120) as c:
            barrier.wait()
            try:
                results[i] = c.post("/v1/completions", json=body)
            except BaseException as e:  # noqa: BLE001
                results[i] = e

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(isinstance(r, httpx.Response) for r in results), results
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {200, 503}, codes
    assert 1 <= codes.count(200) <= 2 and codes.count(503) >= n - 2, codes  # one running, at most one waiting
    for r in results:
        if r.status_code == 503:
            err = _error(r, 503)
            assert int(r.headers["Retry-After"]) >= 1 and err["code"] == "queue_full"
        else:
            assert r.json()["usage"]["completion_tokens"] == 48
    guarded.assert_healthy()


def test_body_limit(guarded):
    big = {"messages": [{"role": "user", "content": "x" * 100_000}], "max_tokens": 4}
    err = _error(guarded.http.post("/v1/chat/completions", json=big), 413)
    assert "bytes" in err["message"]
    # the same without a Content-Length (chunked upload)
    chunks = (b'{"prompt": "' + b"x" * 20_000 for _ in range(5))
    r = guarded.http.post("/v1/completions", content=chunks)
    _error(r, 413)
    guarded.assert_healthy()


def test_ctrl_c_ends_running_requests(guarded):  # the last use of this server: it stops it
    got: dict[str, object] = {}

    def stream():
        body = {"prompt": "1, 2, 3,", "max_tokens": 200, "temperature": 0, "stream": True, "logit_bias": NO_EOS}
        with httpx.Client(base_url=guarded.url, headers=guarded.headers, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json=body) as r:
                got["events"] = [line for line in r.iter_lines() if line]

    t = threading.Thread(target=stream)
    t.start()
    assert _wait_for(lambda: _sample(guarded.metrics(), "edgeinfer_active_sequences") == 1)
    start = time.monotonic()
    assert guarded.stop() == 0
    assert time.monotonic() - start < 10
    t.join(timeout=10)
    events = got["events"]
    assert json.loads(events[-1][6:])["error"]["code"] == "shutting_down"
    assert "edgeinfer serve: stopped" in guarded.log.read_text()


# -- in process, without a model or a socket: validation and the app's error paths


def test_parse_chat_request_defaults_and_fields():
    req = parse_chat_request({"messages": CHAT}, n_vocab=100)
    d = SamplingParams()
    assert req.kind == "chat" and req.messages == CHAT and req.max_tokens is None and not req.stream
    assert (req.params.temperature, req.params.top_k, req.params.top_p, req.params.min_p) == (
        d.temperature, d.top_k, d.top_p, d.min_p)  # fmt: skip  (edgeinfer run's defaults)
    req = parse_chat_request({
        "messages": [{"role": "developer", "content": [{"type": "text", "text": "Be "},
                                                       {"type": "text", "text": "brief"}]},
                     {"role": "user", "content": "hi"}],
        "max_completion_tokens": 9, "max_tokens": 3, "temperature": 0, "top_p": 0.5, "top_k": 7, "min_p": 0.2,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "repeat_penalty": 1.2, "seed": 3, "stop": "\n",
        "logit_bias": {"5": -100, "6": 2.5}, "n": 1, "stream": True, "stream_options": {"include_usage": True},
        "whatever": [1],
    }, n_vocab=100)  # fmt: skip
    assert req.messages[0] == {"role": "system", "content": "Be brief"}
    assert req.max_tokens == 9 and req.stop == ["\n"] and req.stream and req.include_usage
    p = req.params
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.presence_penalty, p.frequency_penalty, p.repeat_penalty,
            p.seed, p.logit_bias) == (0, 0.5, 7, 0.2, 0.5, -0.5, 1.2, 3, {5: -100.0, 6: 2.5})  # fmt: skip
    assert parse_chat_request({"messages": CHAT, "stream_options": {"include_usage": True}}).include_usage is False
    nulls = parse_chat_request({"messages": CHAT, "temperature": None, "stop": None, "seed": None, "n": None})
    assert nulls.params.temperature == d.temperature and nulls.stop == []


@pytest.mark.parametrize("body, param", [
    ({}, "messages"), ({"messages": []}, "messages"), ({"messages": [{"role": "user"}], "n": 3}, "n"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": CHAT, "temperature": "hot"}, "temperature"), ({"messages": CHAT, "temperature": -0.1}, "temperature"),
    ({"messages": CHAT, "temperature": True}, "temperature"), ({"messages": CHAT, "max_tokens": -1}, "max_tokens"),
    ({"messages": CHAT, "max_tokens": "8"}, "max_tokens"), ({"messages": CHAT, "max_completion_tokens": 0},
                                                            "max_completion_tokens"),
    ({"messages": CHAT, "top_p": 0}, "top_p"), ({"messages": CHAT, "top_p": 1.5}, "top_p"),
    ({"messages": CHAT, "top_k": 2.5}, "top_k"), ({"messages": CHAT, "min_p": 2}, "min_p"),
    ({"messages": CHAT, "repeat_penalty": 0}, "repeat_penalty"), ({"messages": CHAT, "presence_penalty": 2.5},
                                                                  "presence_penalty"),
    ({"messages": CHAT, "frequency_penalty": "x"}, "frequency_penalty"), ({"messages": CHAT, "seed": -1}, "seed"),
    ({"messages": CHAT, "seed": 1.5}, "seed"), ({"messages": CHAT, "stop": 5}, "stop"),
    ({"messages": CHAT, "stop": ["a", 1]}, "stop"), ({"messages": CHAT, "stop": ["s"] * 17}, "stop"),
    ({"messages": CHAT, "logit_bias": [1]}, "logit_bias"), ({"messages": CHAT, "logit_bias": {"a": 1}}, "logit_bias"),
    ({"messages": CHAT, "logit_bias": {"100": 1}}, "logit_bias"), ({"messages": CHAT, "logit_bias": {"1": 101}},
                                                                   "logit_bias"),
    ({"messages": CHAT, "logit_bias": {"1": "x"}}, "logit_bias"), ({"messages": CHAT, "stream": 1}, "stream"),
    ({"messages": CHAT, "stream": True, "stream_options": 1}, "stream_options"),
    ({"messages": CHAT, "logprobs": 1}, "logprobs"), ({"messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": CHAT, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"messages": CHAT, "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"messages": CHAT, "grammar": "root ::= ("}, "grammar"),
])  # fmt: skip
def test_parse_chat_request_errors(body, param):
    with pytest.raises(RequestError) as e:
        parse_chat_request(body, n_vocab=100)
    assert e.value.param == param and e.value.status == 400
    assert e.value.body()["error"]["type"] == "invalid_request_error"


def test_parse_completion_request():
    assert parse_completion_request({"prompt": "hi"}).prompt == "hi"
    assert parse_completion_request({"prompt": ["hi"]}).prompt == "hi"
    assert parse_completion_request({"prompt": [1, 2, 3]}, n_vocab=10).prompt == [1, 2, 3]
    assert parse_completion_request({"prompt": [[1, 2]]}, n_vocab=10).prompt == [1, 2]
    assert parse_completion_request({"prompt": "x", "echo": True, "best_of": 1}).echo
    for body in ({}, {"prompt": 5}, {"prompt": []}, {"prompt": ["a", "b"]}, {"prompt": [1, 10]}, {"prompt": [True]},
                 {"prompt": "x", "best_of": 2, "_p": "best_of"}, {"prompt": "x", "logprobs": 21, "_p": "logprobs"},
                 {"prompt": "x", "suffix": "y", "_p": "suffix"},
                 {"prompt": "x", "echo": "yes", "_p": "echo"}):  # fmt: skip
        with pytest.raises(RequestError) as e:
            parse_completion_request(body, n_vocab=10)
        assert e.value.param == body.get("_p", "prompt")


def test_parse_json_body():
    assert parse_json_body(b'{"a": 1}') == {"a": 1}
    for raw in (b"{", b"", b"[]", b"1", b"\xff", b'{"a": Infinity}'):
        with pytest.raises(RequestError) as e:
            parse_json_body(raw)
        assert e.value.status == 400 and e.value.param is None
    params, max_tokens, stop = parse_sampling({"max_tokens": 5, "stop": ["", "x"]})
    assert max_tokens == 5 and stop == ["x"] and isinstance(params, SamplingParams)


class _FakeLLM:
    n_vocab = 100
    n_ctx = 64
    path = Path("fake.gguf")
    architecture = "fake"

    def tokenize_chat(self, messages):
        return [1] * sum(len(m["content"]) for m in messages)

    def tokenize(self, text, add_special=True, parse_special=False):
        return [1] * len(text)

    def detokenize(self, ids):
        return "x" * len(ids)


class _FakeRunner:
    """Answers at once from the event loop: `mode` picks the behaviour."""

    n_ctx = 64

    def __init__(self, mode: str):
        self.mode = mode
        self.submitted: list[tuple[list[int], int]] = []

    def check_prompt(self, ids):
        from edgeinfer.engine.runner import PromptTooLongError

        if not ids or len(ids) >= self.n_ctx:
            raise PromptTooLongError(f"The prompt is {len(ids)} tokens long but the context holds {self.n_ctx}.")

    def check_speculative(self, mode):
        pass

    def submit(self, ids, params, max_tokens, stop=(), loop=None, speculative=None, grammar=None, logprobs=None):
        self.submitted.append((list(ids), max_tokens))
        if self.mode == "crash":
            raise KeyError("boom")
        if self.mode == "full":
            raise QueueFullError("2 requests are already waiting; try again shortly.")
        h = Handle(list(ids), params, max_tokens, stop, loop)
        if self.mode == "error":
            h.emit(Finish("error", len(ids), 0, error="RuntimeError: the kernel fell over"))
        else:
            h.emit("Hel")
            h.emit("lo")
            h.emit(Finish("stop", len(ids), 2))
        return h

    def stats(self):
        return {"requests_total": len(self.submitted), "queue_depth": 0, "active": 0}


def _app_client(mode: str, **kw):
    from starlette.testclient import TestClient

    runner = _FakeRunner(mode)
    return TestClient(create_app(_FakeLLM(), runner, model_name="fake", energy_source="estimate", **kw)), runner


def test_app_answers_and_clamps_max_tokens():
    client, runner = _app_client("ok")
    with client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "abcd"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello"
        assert runner.submitted[-1] == ([1] * 4, 64 - 4)  # no max_tokens: until the context ends
        client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 1000})
        assert runner.submitted[-1][1] == 64 - 3
        r = client.post("/v1/completions", json={"prompt": "abc", "stream": True,
                                                  "stream_options": {"include_usage": True}})  # fmt: skip
        events = [line[6:] for line in r.text.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "Hello"
        assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        err = _error(client.post("/v1/completions", json={"prompt": "x" * 64}), 400, param="prompt")
        assert "context" in err["message"]


def test_app_unexpected_errors_are_json_500_and_the_app_keeps_serving():
    client, _ = _app_client("crash")
    with client:
        err = _error(client.post("/v1/chat/completions", json={"messages": CHAT}), 500)
        assert err["type"] == "server_error"
        assert client.get("/health").json() == {"status": "ok"}
        assert _sample(client.get("/metrics").text, "edgeinfer_requests_total", endpoint="/v1/chat/completions",
                       status="500") == 1  # fmt: skip
    client, _ = _app_client("error")
    with client:
        err = _error(client.post("/v1/completions", json={"prompt": "hi"}), 500)
        assert "kernel fell over" in err["message"]
        r = client.post("/v1/completions", json={"prompt": "hi", "stream": True})
        assert '"error"' in r.text and "[DONE]" not in r.text


def test_app_queue_full_and_body_limit():
    client, _ = _app_client("full", max_body_bytes=100)
    with client:
        r = client.post("/v1/completions", json={"prompt": "hi"})
        err = _error(r, 503)
        assert r.headers["Retry-After"] == "1" and err["code"] == "queue_full"
        _error(client.post("/v1/completions", json={"prompt": "x" * 200}), 413)
