"""`edgeinfer serve A B`: many models in one real server process, in several dialects, with the official clients.

Two server processes, each started once: the main one serves SmolLM2 as "smol" and Gemma 3 as "gemma"
(--api-key, --max-models 2, the first preloaded, Gemma loaded on first use): OpenAI's chat, completions,
embeddings and Responses (streamed and not) and Anthropic's Messages (streamed and not, count_tokens,
x-api-key) with the official `openai` and `anthropic` clients; unknown models are 404 in each dialect's
shape; keep_alive 0 unloads after the reply; /metrics is labelled by model; `edgeinfer ps` and `stop`.
The second (--max-models 1): LRU eviction, and an unload during a running stream that does not cut it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import numpy as np
import openai
import pytest

from test_server import Server, _free_port, _sample, _wait_for

KEY = "sekrit"
MODELS = ["smollm2-135m", "gemma3-270m"]
FIXTURES = Path(__file__).parent / "fixtures"


class Multi(Server):
    """test_server.Server with several MODEL arguments (before the options: argparse reads them as one list)."""

    def __init__(self, tmp: Path, models: list[str], *args: str, key: str | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "edgeinfer", "serve", *models, "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, timeout=60, headers=self.headers)
        self.key = key
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

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=self.key or "none", max_retries=0, timeout=60)

    def client(self, **kw) -> openai.OpenAI:
        kw.setdefault("api_key", self.key or "none")
        return super().client(**kw)

    def states(self) -> dict:
        return {m["id"]: m["state"] for m in self.http.get("/models").json()["data"]}


@pytest.fixture(scope="module")
def multi(smollm2_path, gemma3_path, tmp_path_factory):
    s = Multi(tmp_path_factory.mktemp("multi"), MODELS, "--alias", "smol", "--alias", "gemma",
              "--parallel", "2", "--ctx-size", "512", "--api-key", KEY, key=KEY)  # fmt: skip
    yield s
    s.stop()


@pytest.fixture(scope="module")
def single_slot(smollm2_path, gemma3_path, tmp_path_factory):
    s = Multi(tmp_path_factory.mktemp("multi1"), MODELS, "--alias", "smol", "--alias", "gemma",
              "--max-models", "1", "--ctx-size", "256", "--keep-alive", "-1")  # fmt: skip
    yield s
    s.stop()


CHAT = [{"role": "user", "content": "Name a color."}]


def test_listing_and_load_on_first_use(multi):
    assert "smol, gemma listening on" in multi.log.read_text()
    data = {m.id: m for m in multi.client().models.list().data}
    assert set(data) == {"smol", "gemma"}
    if multi.states()["gemma"] == "unloaded":  # first use (unless another test used it already)
        r = multi.client().chat.completions.create(model="gemma", messages=CHAT, max_tokens=3, temperature=0)
        assert r.model == "gemma" and r.usage.completion_tokens == 3
    page = multi.http.get("/models").json()["data"]
    gemma = next(m for m in page if m["id"] == "gemma")
    assert gemma["state"] == "loaded" and gemma["memory_bytes"] > 200e6 and gemma["load_seconds"] > 0
    assert gemma["meta"]["architecture"] == "gemma3" and gemma["last_used"] > 0


@pytest.mark.parametrize("model", ["smol", "gemma"])
def test_openai_chat_and_completions(multi, model):
    client = multi.client()
    r = client.chat.completions.create(model=model, messages=CHAT, max_tokens=5, temperature=0)
    assert r.model == model and r.choices[0].message.content and r.usage.completion_tokens <= 5
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=CHAT, max_tokens=5, temperature=0, stream=True) if c.choices]  # fmt: skip
    assert "".join(parts) == r.choices[0].message.content  # streamed and not: the same greedy reply
    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0)
    streamed = "".join(x.choices[0].text for x in client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=4, temperature=0, stream=True) if x.choices)  # fmt: skip
    assert c.model == model and streamed == c.choices[0].text


def test_openai_embeddings(multi):
    client = multi.client()
    ref = np.load(FIXTURES / "embed_smollm2.npz")
    texts = [str(t) for t in ref["texts"]]
    r = client.embeddings.create(model="smol", input=texts)  # the client asks for base64 and decodes it
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert got.shape == (3, 576) and r.usage.prompt_tokens == sum(len(ref[f"ids_{i}"]) for i in range(3))
    assert np.sum(got * ref["mean"], axis=1).min() >= 0.999  # llama.cpp's mean pooling
    floats = client.embeddings.create(model="smol", input=texts[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, got[0], atol=1e-6)
    ids = client.embeddings.create(model="smol", input=ref["ids_1"].tolist())  # token ids
    assert np.allclose(ids.data[0].embedding, got[1], atol=2e-3)
    last = multi.http.post("/v1/embeddings", json={"model": "smol", "input": texts, "pooling": "last"}).json()
    assert np.sum(np.array([d["embedding"] for d in last["data"]]) * ref["last"], axis=1).min() >= 0.999
    raw = multi.http.post("/v1/embeddings", json={"model": "gemma", "input": ["a", "b"],
                                                  "encoding_format": "base64"}).json()  # fmt: skip
    v = np.frombuffer(base64.b64decode(raw["data"][1]["embedding"]), dtype="<f4")
    assert v.shape == (640,) and abs(np.linalg.norm(v) - 1) < 1e-4 and raw["model"] == "gemma"
    for body, param in (({"model": "smol"}, "input"), ({"model": "smol", "input": []}, "input"),
                        ({"model": "smol", "input": [10**9]}, "input"), ({"model": "smol", "input": [[]]}, "input"),
                        ({"model": "smol", "input": "x", "encoding_format": "hex"}, "encoding_format"),
                        ({"model": "smol", "input": "x", "dimensions": 3}, "dimensions"),
                        ({"model": "smol", "input": "x " * 600}, "input")):  # fmt: skip
        r = multi.http.post("/v1/embeddings", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)


def test_embeddings_beside_a_stream(multi):
    """Embedding requests at once (batched on the runner's worker, one pass per step) while a reply streams:
    each gets its own vectors, the stream its whole reply."""
    from concurrent.futures import ThreadPoolExecutor

    client = multi.client()
    texts = [f"text number {i} " * (1 + 20 * (i % 3)) for i in range(6)]  # up to ~100 tokens: several passes
    alone = [client.embeddings.create(model="smol", input=t).data[0].embedding for t in texts]
    with ThreadPoolExecutor(7) as pool:
        stream = pool.submit(lambda: client.chat.completions.create(
            model="smol", messages=CHAT, max_tokens=24, temperature=0, logit_bias={"2": -100}).usage.completion_tokens)  # fmt: skip
        together = list(pool.map(lambda t: client.embeddings.create(model="smol", input=[t, "x"]).data[0].embedding, texts))
        assert stream.result() == 24
    for a, b in zip(alone, together):
        assert np.abs(np.array(a) - np.array(b)).max() < 2e-3


def test_openai_responses(multi):
    client = multi.client()
    r = client.responses.create(model="smol", input="Name a color.", instructions="Answer in one word.",
                                max_output_tokens=6, temperature=0)  # fmt: skip
    assert r.model == "smol" and r.output_text and r.usage.output_tokens <= 6 and r.status in ("completed", "incomplete")
    events = list(client.responses.create(model="smol", input="Name a color.", instructions="Answer in one word.",
                                          max_output_tokens=6, temperature=0, stream=True))  # fmt: skip
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] in ("response.completed",
                                                                                        "response.incomplete")  # fmt: skip
    assert "response.output_item.added" in types and "response.output_text.done" in types
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == r.output_text == events[-1].response.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    items = client.responses.create(model="gemma", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Say yes."}]}], max_output_tokens=3)  # fmt: skip
    assert items.model == "gemma" and items.usage.output_tokens <= 3
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="smol", input="x", previous_response_id="resp_1")
    assert e.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="smol", input="x", max_output_tokens=0)
    assert e.value.body["param"] == "max_output_tokens"


def test_responses_tools(multi):
    """A named tool_choice forces a call (the grammar of toolcalls.py): a function_call item with JSON arguments."""
    tool = {"type": "function", "name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}  # fmt: skip
    r = multi.client().responses.create(model="smol", input="Weather in Paris?", tools=[tool], max_output_tokens=40,
                                        tool_choice={"type": "function", "name": "get_weather"}, temperature=0)  # fmt: skip
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and "city" in json.loads(calls[0].arguments)
    with multi.client().responses.stream(model="smol", input="Weather in Paris?", tools=[tool], max_output_tokens=40,
                                         tool_choice={"type": "function", "name": "get_weather"},
                                         temperature=0) as stream:  # the client's helper checks the event order  # fmt: skip
        final = stream.get_final_response()
    assert [(o.name, o.arguments) for o in final.output] == [(c.name, c.arguments) for c in calls]


def test_anthropic_messages(multi):
    client = multi.anthropic()
    greedy = {"extra_body": {"temperature": 0}}  # this client version has no temperature argument
    m = client.messages.create(model="smol", max_tokens=6, messages=CHAT, system="Answer in one word.", **greedy)
    assert m.model == "smol" and m.role == "assistant" and m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens") and m.usage.output_tokens <= 6
    with client.messages.stream(model="smol", max_tokens=6, messages=CHAT, system="Answer in one word.",
                                **greedy) as stream:  # fmt: skip
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == m.content[0].text and final.stop_reason == m.stop_reason
    raw = list(client.messages.create(model="gemma", max_tokens=3, messages=CHAT, stream=True))
    assert [e.type for e in raw][0] == "message_start" and raw[-1].type == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= {e.type for e in raw}
    n = client.messages.count_tokens(model="smol", messages=CHAT, system="Answer in one word.")
    assert n.input_tokens == m.usage.input_tokens
    blocks = client.messages.create(model="smol", max_tokens=3, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "user", "content": [{"type": "text", "text": "Bye"}]}])  # fmt: skip
    assert blocks.usage.output_tokens <= 3


def test_anthropic_tools(multi):
    tool = {"name": "get_weather", "description": "Weather of a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    m = multi.anthropic().messages.create(model="smol", max_tokens=40, tools=[tool], extra_body={"temperature": 0},
                                          tool_choice={"type": "tool", "name": "get_weather"},
                                          messages=[{"role": "user", "content": "Weather in Paris?"}])  # fmt: skip
    uses = [b for b in m.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and "city" in uses[0].input and m.stop_reason == "tool_use"
    with multi.anthropic().messages.stream(model="smol", max_tokens=40, tools=[tool], extra_body={"temperature": 0},
                                           tool_choice={"type": "tool", "name": "get_weather"},
                                           messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:  # fmt: skip
        final = stream.get_final_message()  # the tool's input rebuilt from input_json_delta events
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [(u.name, u.input) for u in uses]
    follow = multi.anthropic().messages.create(model="smol", max_tokens=5, tools=[tool], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": uses[0].id, "name": "get_weather",
                                           "input": uses[0].input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 21 C"}]}])  # fmt: skip
    assert follow.usage.output_tokens <= 5


def test_errors_in_each_dialect(multi):
    with pytest.raises(openai.NotFoundError) as e:
        multi.client().chat.completions.create(model="nope", messages=CHAT, max_tokens=2)
    assert e.value.body["code"] == "model_not_found" and "smol" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        multi.client().embeddings.create(model="nope", input="x")
    with pytest.raises(anthropic.NotFoundError) as e:
        multi.anthropic().messages.create(model="nope", max_tokens=2, messages=CHAT)
    assert e.value.body == {"type": "error", "error": {"type": "not_found_error", "message": e.value.body["error"]["message"]}}
    r = multi.http.post("/v1/messages", json={"model": "smol", "messages": CHAT})  # max_tokens is required there
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error" and "max_tokens" in r.text
    r = multi.http.post("/v1/messages", json={"model": "smol", "max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "image", "source": {}}]}]})  # fmt: skip
    assert r.status_code == 400 and r.json()["type"] == "error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=multi.url, api_key="wrong", max_retries=0).messages.create(
            model="smol", max_tokens=2, messages=CHAT)  # fmt: skip
    with pytest.raises(openai.AuthenticationError):
        multi.client(api_key="wrong").models.list()
    r = multi.http.post("/v1/chat/completions", json={"model": "smol", "messages": CHAT, "keep_alive": "soon"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive"
    multi.assert_healthy()


def test_keep_alive_zero_and_metrics(multi):
    client = multi.client()
    client.chat.completions.create(model="gemma", messages=CHAT, max_tokens=2, extra_body={"keep_alive": -1})
    assert multi.states()["gemma"] == "loaded"
    client.chat.completions.create(model="gemma", messages=CHAT, max_tokens=2, extra_body={"keep_alive": 0})
    assert _wait_for(lambda: multi.states()["gemma"] == "unloaded")
    page = multi.metrics()
    assert _sample(page, "edgeinfer_requests_total", endpoint="/v1/chat/completions", status="200", model="gemma") >= 2
    assert _sample(page, "edgeinfer_model_loaded", model="gemma") == 0
    assert _sample(page, "edgeinfer_model_loaded", model="smol") == 1
    assert _sample(page, "edgeinfer_generated_tokens_total", model="smol") > 0
    assert _sample(page, "edgeinfer_embedding_tokens_total", model="smol") >= 0
    assert page.count("# TYPE edgeinfer_generated_tokens_total ") == 1  # one family, a sample per model


def test_cli_ps_and_stop(multi):
    env = {**os.environ, "EDGEINFER_API_KEY": KEY}
    run = lambda *a: subprocess.run([sys.executable, "-m", "edgeinfer", *a, "--port", str(multi.port)],  # noqa: E731
                                    capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    multi.http.post("/models/load", json={"model": "gemma", "keep_alive": "10m"}).raise_for_status()
    out = run("ps")
    assert out.returncode == 0 and re.search(r"^gemma\s+loaded\s+\S+ MB\s+0\s+.*in (9|10) minutes", out.stdout, re.M), out
    out = run("stop", "gemma")
    assert out.returncode == 0 and "gemma: unloaded" in out.stdout
    assert multi.states()["gemma"] == "unloaded"
    assert "gemma" not in run("ps").stdout
    out = run("stop", "nope")
    assert out.returncode == 1 and "does not exist" in out.stderr


def test_concurrent_requests_wait_for_one_load(multi):
    from concurrent.futures import ThreadPoolExecutor

    multi.http.post("/models/unload", json={"model": "gemma"})
    assert _wait_for(lambda: multi.states()["gemma"] == "unloaded")
    client = multi.client()
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda i: client.completions.create(model="gemma", prompt=f"{i} +", max_tokens=2),
                                range(3)))  # fmt: skip
    assert all(r.model == "gemma" and r.usage.completion_tokens >= 1 for r in replies)
    gemma = next(m for m in multi.http.get("/models").json()["data"] if m["id"] == "gemma")
    assert gemma["state"] == "loaded" and gemma["active_requests"] == 0


def test_lru_eviction_at_max_models_1(single_slot):
    client = single_slot.client()
    assert single_slot.states() == {"smol": "loaded", "gemma": "unloaded"}
    client.completions.create(model="gemma", prompt="Hi", max_tokens=2)
    assert single_slot.states() == {"smol": "unloaded", "gemma": "loaded"}
    client.completions.create(model="smol", prompt="Hi", max_tokens=2)
    assert single_slot.states() == {"smol": "loaded", "gemma": "unloaded"}


def test_unload_during_a_stream_does_not_cut_it(single_slot):
    client = single_slot.client()
    client.completions.create(model="smol", prompt="Hi", max_tokens=1)  # loaded
    stream = client.chat.completions.create(model="smol", messages=CHAT, max_tokens=48, temperature=0, stream=True,
                                            logit_bias={"2": -100}, stream_options={"include_usage": True})  # fmt: skip
    chunks = iter(stream)
    first = next(chunks)
    r = single_slot.http.post("/models/unload", json={"model": "smol"})
    assert r.json()["status"] == "unloading" and single_slot.states()["smol"] == "loaded"
    rest = list(chunks)
    usage = rest[-1].usage
    assert first.choices[0].delta.role == "assistant" and usage is not None
    finish = [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"] and usage.completion_tokens == 48  # <|im_end|> (2) banned: the whole reply came
    assert _wait_for(lambda: single_slot.states()["smol"] == "unloaded")  # when its last request ended
    single_slot.assert_healthy()
