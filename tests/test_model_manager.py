"""edgeinfer/server/models.py: the rules of many models in one server, with fake loaders (no model runs):
ids, load on first use (concurrent requests wait for one load), keep_alive (ollama's durations, 0, negative),
LRU eviction by count and by memory, never unloading a model with requests running."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from edgeinfer.errors import EdgeInferError
from edgeinfer.server.models import (ModelBusy, ModelLoadError, ModelManager, ModelNotFound, ModelSpec, parse_bytes,
                                     parse_keep_alive, specs_from)  # fmt: skip


class FakeRunner:
    def __init__(self, name):
        self.name = name
        self.stopped = False

    def stop(self):
        self.stopped = True


class Loader:
    def __init__(self, delay=0.0, fail=()):
        self.delay = delay
        self.fail = set(fail)
        self.loads: list[str] = []
        self.runners: dict[str, list[FakeRunner]] = {}

    def __call__(self, spec):
        time.sleep(self.delay)
        if spec.id in self.fail:
            raise OSError(f"cannot read {spec.source}")
        self.loads.append(spec.id)
        r = FakeRunner(spec.id)
        self.runners.setdefault(spec.id, []).append(r)
        return object(), r


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def manager(loader, n=3, clock=None, **kw):
    specs = [ModelSpec(f"m{i}", f"/m/m{i}.gguf", 100) for i in range(n)]
    kw.setdefault("max_memory", 10_000)
    return ModelManager(specs, loader, clock=clock or Clock(), memory_of=lambda e: e.spec.size_bytes, **kw)


def states(m):
    return {d["id"]: d["state"] for d in m.status()}


def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_keep_alive_parsing():
    assert parse_keep_alive(None) is None
    assert parse_keep_alive("5m") == 300 and parse_keep_alive("1h30m") == 5400 and parse_keep_alive("90s") == 90
    assert parse_keep_alive("1.5s") == 1.5 and parse_keep_alive("500ms") == 0.5 and parse_keep_alive(30) == 30
    assert parse_keep_alive("0") == 0 and parse_keep_alive(0) == 0 and parse_keep_alive("20") == 20
    assert parse_keep_alive(-1) == -1 and parse_keep_alive("-1m") == -1 and parse_keep_alive("-1") == -1
    for bad in ("5 minutes", "m", "", "1x", True, [1], float("nan")):
        with pytest.raises(ValueError):
            parse_keep_alive(bad)
    assert parse_bytes("4G") == 4 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes(1000) == 1000
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_ids(tmp_path):
    for name in ("a.gguf", "b.gguf", "notes.txt"):
        (tmp_path / name).write_bytes(b"x" * 10)
    specs = specs_from([str(tmp_path / "a.gguf")], models_dir=tmp_path, aliases=["alpha"])
    assert [(s.id, s.size_bytes) for s in specs] == [("alpha", 10), ("a", 10), ("b", 10)]
    assert [s.id for s in specs_from(["smollm2-135m"])] == ["smollm2-135m"]
    with pytest.raises(EdgeInferError, match="neither"):
        specs_from(["no-such-model"])
    with pytest.raises(EdgeInferError, match="not a directory"):
        specs_from([], models_dir=tmp_path / "nope")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.gguf").write_bytes(b"y")
    with pytest.raises(EdgeInferError, match="--alias"):
        specs_from([str(tmp_path / "a.gguf"), str(tmp_path / "sub" / "a.gguf")])


def test_load_on_first_use_and_concurrent_waiters():
    loader = Loader(delay=0.2)
    m = manager(loader)
    assert states(m) == {"m0": "unloaded", "m1": "unloaded", "m2": "unloaded"}
    with pytest.raises(ModelNotFound, match="m0"):
        m.acquire("nope")
    leases = []
    threads = [threading.Thread(target=lambda: leases.append(m.acquire("m0"))) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.loads == ["m0"] and len(leases) == 5  # one load for five requests
    assert m.entry("m0").active == 5 and states(m)["m0"] == "loaded"
    for lease in leases:
        lease.release()
        lease.release()  # idempotent
    assert m.entry("m0").active == 0


def test_async_waiters_and_bounded_waiting():
    loader = Loader(delay=0.2)
    m = manager(loader, max_waiting=2)

    async def main():
        tasks = [asyncio.ensure_future(m.acquire_async("m1")) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ModelBusy, match="already wait"):
            await m.acquire_async("m1")
        leases = await asyncio.gather(*tasks)
        return leases

    leases = asyncio.run(main())
    assert all(lease.entry.state == "loaded" for lease in leases) and loader.loads == ["m1"]


def test_keep_alive_expiry_zero_and_forever():
    clock = Clock()
    loader = Loader()
    m = manager(loader, clock=clock, keep_alive="5m")
    m.acquire("m0").release()  # the server's default: 5 minutes
    clock.t += 299
    assert m.sweep() == []
    clock.t += 2
    assert m.sweep() == ["m0"] and states(m)["m0"] == "unloaded" and loader.runners["m0"][0].stopped
    m.acquire("m1", keep_alive=-1).release()  # forever
    clock.t += 10**6
    assert m.sweep() == [] and states(m)["m1"] == "loaded"
    lease = m.acquire("m2", keep_alive=0)  # unloaded once its last request ends
    other = m.acquire("m2", keep_alive="10m")
    other.release()
    assert states(m)["m2"] == "loaded"
    lease.release()
    assert wait_for(lambda: states(m)["m2"] == "unloaded")


def test_lru_eviction_by_count_never_a_busy_model():
    loader = Loader()
    m = manager(loader, max_models=2, keep_alive=-1)
    m.acquire("m0").release()
    busy = m.acquire("m1")  # m1 runs a request
    m.acquire("m2").release()  # the idle one (m0) goes, though it is older than nothing else
    assert states(m) == {"m0": "unloaded", "m1": "loaded", "m2": "loaded"}
    m.acquire("m0").release()  # m2 is the least recently used idle one; m1 is busy
    assert states(m) == {"m0": "loaded", "m1": "loaded", "m2": "unloaded"}
    assert not loader.runners["m1"][0].stopped
    busy.release()


def test_load_waits_while_every_model_is_busy():
    loader = Loader()
    m = manager(loader, max_models=1, keep_alive=-1, load_timeout_s=0.3)
    busy = m.acquire("m0")
    with pytest.raises(ModelBusy, match="busy|did not load"):
        m.acquire("m1")
    assert wait_for(lambda: states(m)["m1"] == "unloaded") and states(m)["m0"] == "loaded"  # the load gave up
    m2 = manager(Loader(), max_models=1, keep_alive=-1, load_timeout_s=5)
    b = m2.acquire("m0")
    threading.Timer(0.2, b.release).start()
    t0 = time.monotonic()
    m2.acquire("m1").release()  # waited for m0 to go idle, then evicted it
    assert time.monotonic() - t0 >= 0.15 and states(m2) == {"m0": "unloaded", "m1": "loaded", "m2": "unloaded"}
    busy.release()


def test_eviction_by_memory():
    loader = Loader()
    m = manager(loader, max_models=3, max_memory=250, keep_alive=-1)  # each model: 100 bytes
    m.acquire("m0").release()
    m.acquire("m1").release()
    m.acquire("m2").release()
    assert states(m) == {"m0": "unloaded", "m1": "loaded", "m2": "loaded"}


def test_unload_during_a_request_waits_for_its_end():
    loader = Loader()
    m = manager(loader, keep_alive=-1)
    lease = m.acquire("m0")
    assert m.unload("m0") == "unloading"
    assert states(m)["m0"] == "loaded" and not loader.runners["m0"][0].stopped  # the reply goes on
    lease.release()
    assert wait_for(lambda: states(m)["m0"] == "unloaded") and loader.runners["m0"][0].stopped
    assert m.unload("m0") == "not_loaded"
    m.load("m0")
    assert m.unload("m0") == "unloaded"


def test_request_during_unload_loads_again():
    loader = Loader()
    m = manager(loader, keep_alive=0)
    m.acquire("m0").release()  # keep_alive 0: an unload starts on a thread
    lease = m.acquire("m0", keep_alive=-1)  # whether it caught the old load or a new one, it is loaded
    assert lease.entry.state == "loaded" and lease.runner is not None and not lease.runner.stopped
    lease.release()


def test_load_failure_is_reported_and_retried():
    loader = Loader(fail={"m0"})
    m = manager(loader)
    with pytest.raises(ModelLoadError, match="cannot read"):
        m.acquire("m0")
    assert states(m)["m0"] == "unloaded"
    loader.fail.clear()
    m.acquire("m0").release()
    assert states(m)["m0"] == "loaded"


def test_close_unloads_everything():
    loader = Loader()
    m = manager(loader, keep_alive=-1)
    m.start(interval_s=0.05)
    m.acquire("m0").release()
    m.close()
    assert states(m)["m0"] == "unloaded" and loader.runners["m0"][0].stopped
    with pytest.raises(ModelBusy):
        m.acquire("m1")
