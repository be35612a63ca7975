"""Many models in one server: which models exist, which are loaded, and when they load and unload.

    manager = ModelManager(specs_from(["smollm2-135m", "/m/gemma.gguf"], models_dir="~/models"), loader)
    manager.start()
    lease = await manager.acquire_async("smollm2-135m", keep_alive="5m")   # loads it on first use
    ... lease.llm, lease.runner ...
    lease.release()                                                         # the request ended
    manager.status()                                                        # GET /models

ollama's rules:
- Every model the server was given (a path or a registry name) or finds (`.gguf` files in --models-dir)
  has an id: its registry name, its file stem, or its --alias. A request names one.
- A model loads on first use. Requests for a model that is loading wait for it (at most
  `max_waiting` of them, for at most `load_timeout_s`) instead of failing.
- keep_alive (per request, else the server's --keep-alive, default 5 minutes): a duration ("5m",
  "1h30m", "90s", a number of seconds); 0 unloads the model once its last request ends; a negative
  value keeps it loaded until it is unloaded explicitly or evicted.
- Before a load, the least recently used idle models are unloaded while the loaded ones would exceed
  `max_models` or `max_memory` (bytes). A model with requests running is never unloaded: an unload
  asked for then (POST /models/unload, keep_alive 0, expiry) happens when its last request ends. When
  every loaded model is busy, the load waits for one to become idle (bounded by load_timeout_s).

Each loaded model has its own runner (its own continuous batch): nothing of one model's requests
enters another's batch. The manager knows nothing of HTTP; the loader (spec -> (llm, runner), started)
is injected, so its rules are tested with fakes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgeInferError

log = logging.getLogger("edgeinfer.server")

DEFAULT_KEEP_ALIVE_S = 300.0
DEFAULT_MAX_MODELS = 2
DEFAULT_LOAD_TIMEOUT_S = 300.0
DEFAULT_MAX_WAITING = 64  # requests waiting for one model to load
MEMORY_HEADROOM = 0.8  # the default budget: this share of what the machine has available at start


class ModelNotFound(EdgeInferError):
    """A request named a model this server does not know (404)."""

    def __init__(self, model_id: str, known: Iterable[str]):
        known = sorted(known)
        shown = ", ".join(repr(k) for k in known[:20]) + (", ..." if len(known) > 20 else "")
        super().__init__(f"The model {model_id!r} does not exist here; this server has {shown or 'no models'}.")
        self.model_id = model_id


class ModelBusy(EdgeInferError):
    """A model cannot be loaded now (too many waiting, or every loaded model busy too long): 503."""


class ModelLoadError(EdgeInferError):
    """Loading a model failed (a bad file, not enough memory): 500, naming the model and the cause."""


# -- keep_alive


_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value) -> float | None:
    """ollama's keep_alive -> seconds: a number (seconds) or a Go duration ("5m", "1h30m", "-1m", "0").
    Negative: forever (returns -1.0). None stays None (the server's default applies). ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"keep_alive must be a duration like \"5m\" or a number of seconds, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-")
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"keep_alive {value!r} is not a duration: use e.g. \"30s\", \"5m\", \"1h\", "
                                 "0 (unload after the reply) or -1 (keep loaded)") from None  # fmt: skip
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    else:
        raise ValueError(f"keep_alive must be a duration like \"5m\" or a number of seconds, got {type(value).__name__}")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"keep_alive {value!r} is not a finite duration")
    return -1.0 if seconds < 0 else seconds


def parse_bytes(value) -> int:
    """A memory size: an integer of bytes or "512MiB", "4G", "1.5GB" (K/M/G/T, powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(value))
    if not m:
        raise ValueError(f"{value!r} is not a memory size: use e.g. 4G, 512M or a number of bytes")
    return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))


def machine_memory_budget() -> int:
    """What the machine can hold for models, with headroom: MEMORY_HEADROOM of the memory available now
    (MemAvailable, or the cgroup's limit less its usage, whichever is smaller)."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            left = int(limit) - used
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            avail = 8 << 30
    return int(max(avail, 0) * MEMORY_HEADROOM)


def rss_bytes() -> int:
    """This process's resident memory now."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            import ctypes

            lib = ctypes.CDLL("libc.so.6")
            lib.malloc_trim, lib.mallopt  # noqa: B018 -- glibc's, or AttributeError
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def tune_allocator(mmap_threshold: int = 1 << 20) -> bool:
    """Make freed model memory go back to the system (Linux, glibc): buffers of mmap_threshold bytes or more
    are mapped on their own (glibc raises the threshold to 32 MiB after the first large free, and later
    buffers then land on heaps that keep their pages). Measured here: without it, unloading SmolLM2 left
    its 100 MB resident; with it (and release_memory), the process returns to its size before the load."""
    lib = _glibc()
    return bool(lib is not None and lib.mallopt(-3, int(mmap_threshold)))  # M_MMAP_THRESHOLD


def release_memory() -> None:
    """Hand the allocator's free pages back to the system (after an unload)."""
    gc.collect()
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)


# -- what models exist


@dataclass(frozen=True)
class ModelSpec:
    """A model the server can load: its id, where it comes from (a path or a registry name), and its
    file's size when known (the first estimate of its memory, before it was ever loaded)."""

    id: str
    source: str
    size_bytes: int = 0


def model_id_for(source: str) -> str:
    """A source's default id: its registry name, else the file's stem."""
    from ..models import lookup

    if not Path(source).is_file():
        found = lookup(source)
        if found is not None:
            return found.name
    return Path(source).stem


def specs_from(models: Iterable[str] = (), models_dir: str | os.PathLike | None = None,
               aliases: Iterable[str | None] = ()) -> list[ModelSpec]:  # fmt: skip
    """The models a server serves: each of `models` (a path or a registry name; its alias, where
    `aliases` gives one, else model_id_for), then every `.gguf` file in `models_dir` (id: the file
    stem). EdgeInferError for a model that is neither a file nor a known name, a missing directory,
    or two models under one id."""
    from ..models import lookup

    models = [str(m) for m in models]
    aliases = list(aliases) + [None] * (len(models) - len(list(aliases)))
    out: list[ModelSpec] = []
    for source, alias in zip(models, aliases):
        path = Path(source).expanduser()
        if path.is_file():
            out.append(ModelSpec(alias or path.stem, str(path), path.stat().st_size))
        elif lookup(source) is not None:
            s = lookup(source)
            out.append(ModelSpec(alias or s.name, source, int(getattr(s, "size", 0) or 0)))  # the registry knows its size
        else:
            raise EdgeInferError(f"{source!r} is neither a GGUF file nor a registry name (see `edgeinfer list`).")
    if models_dir is not None:
        folder = Path(models_dir).expanduser()
        if not folder.is_dir():
            raise EdgeInferError(f"--models-dir {str(models_dir)!r} is not a directory.")
        for path in sorted(folder.glob("*.gguf")):
            if path.is_file():
                out.append(ModelSpec(path.stem, str(path), path.stat().st_size))
    seen: dict[str, str] = {}
    for s in out:
        if s.id in seen and seen[s.id] != s.source:
            raise EdgeInferError(f"Two models have the id {s.id!r} ({seen[s.id]} and {s.source}); give one an "
                                 "--alias.")  # fmt: skip
        seen[s.id] = s.source
    unique = {s.id: s for s in out}
    return list(unique.values())


# -- loaded models


@dataclass(eq=False)
class Entry:
    """One model's state in the manager."""

    spec: ModelSpec
    state: str = "unloaded"  # "unloaded", "loading", "loaded", "unloading"
    llm: object = None
    runner: object = None
    active: int = 0  # requests holding a lease (waiters of a load count from the moment it completes)
    waiters: int = 0  # requests waiting for it to load
    loading: Future | None = None
    keep_alive_s: float | None = None  # of the latest request (-1: forever)
    expires_at: float | None = None  # monotonic; None: not while in use, or forever
    last_used: float = 0.0  # wall clock of the latest request's start or end
    loaded_at: float = 0.0
    unload_when_idle: bool = False
    memory_bytes: int = 0  # estimate: the file's bytes plus the runner's KV pool
    rss_delta_bytes: int = 0  # this process's resident memory after the load minus before
    load_s: float = 0.0
    unload_s: float | None = None
    n_requests: int = 0
    extra: dict = field(default_factory=dict)  # the server's per-model objects (its metrics, embed queue)


class Lease:
    """A request's hold on a loaded model: the model is not unloaded while a lease is held."""

    def __init__(self, manager: "ModelManager", entry: Entry, keep_alive_s: float | None):
        self.manager = manager
        self.entry = entry
        self.keep_alive_s = keep_alive_s
        self.released = False

    @property
    def id(self) -> str:
        return self.entry.spec.id

    @property
    def llm(self):
        return self.entry.llm

    @property
    def runner(self):
        return self.entry.runner

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.manager._release(self.entry, self.keep_alive_s)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


Loader = Callable[[ModelSpec], tuple[object, object]]  # spec -> (llm, started runner)


class ModelManager:
    def __init__(self, specs: Iterable[ModelSpec], loader: Loader, keep_alive: float | str | None = DEFAULT_KEEP_ALIVE_S,
                 max_models: int = DEFAULT_MAX_MODELS, max_memory: int | None = None,
                 load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S, max_waiting: int = DEFAULT_MAX_WAITING,
                 clock: Callable[[], float] = time.monotonic, memory_of: Callable[[Entry], int] | None = None,
                 on_unload: Callable[[Entry], None] | None = None):  # fmt: skip
        if isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 1:
            raise EdgeInferError(f"max_models must be an integer >= 1, got {max_models!r}.")
        ka = parse_keep_alive(keep_alive)
        self.keep_alive_s = DEFAULT_KEEP_ALIVE_S if ka is None else ka
        self.entries: dict[str, Entry] = {s.id: Entry(s) for s in specs}
        self.loader = loader
        self.max_models = max_models
        self.max_memory = int(max_memory) if max_memory is not None else machine_memory_budget()
        self.load_timeout_s = load_timeout_s
        self.max_waiting = max_waiting
        self.clock = clock
        self.memory_of = memory_of or _default_memory
        self.on_unload = on_unload
        self._lock = threading.Condition()
        self._load_lock = threading.Lock()  # one load at a time (each may need the room another frees)
        self._sweeper: threading.Thread | None = None
        self._closed = False

    # -- what exists
    def ids(self) -> list[str]:
        return list(self.entries)

    def entry(self, model_id: str) -> Entry:
        e = self.entries.get(model_id)
        if e is None:
            raise ModelNotFound(model_id, self.entries)
        return e

    def resolve(self, model_id: str | None) -> str:
        """The id a request means: its `model`; a server of one model takes any name for it (as llama-server
        and the single-model server before it); with several, a request naming none gets the only loaded one."""
        if len(self.entries) == 1:
            return next(iter(self.entries))
        if model_id is None or model_id == "":
            loaded = [e.spec.id for e in self.entries.values() if e.state == "loaded"]
            if len(self.entries) == 1:
                return next(iter(self.entries))
            if len(loaded) == 1:
                return loaded[0]
            raise ModelNotFound("", self.entries)
        if model_id not in self.entries:
            raise ModelNotFound(model_id, self.entries)
        return model_id

    # -- leases
    def acquire(self, model_id: str, keep_alive: float | str | None = None, timeout: float | None = None) -> Lease:
        """A lease on the model, loading it first if needed (blocks). ModelNotFound, ModelBusy, ModelLoadError."""
        ka = parse_keep_alive(keep_alive)
        fut = self._begin(model_id)
        try:
            entry = fut.result(timeout=self.load_timeout_s if timeout is None else timeout)
        except TimeoutError:
            self._abandon(fut, model_id)
            raise ModelBusy(f"The model {model_id!r} did not load within {self.load_timeout_s:g} s; try again.") from None
        return Lease(self, entry, ka)

    async def acquire_async(self, model_id: str, keep_alive: float | str | None = None) -> Lease:
        """acquire() for the event loop: waiting for a load never blocks the loop. A caller cancelled
        while it waits gives its place back (the lease it would have got is released)."""
        ka = parse_keep_alive(keep_alive)
        fut = self._begin(model_id)
        try:
            entry = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), self.load_timeout_s)
        except asyncio.TimeoutError:
            self._abandon(fut, model_id)
            raise ModelBusy(f"The model {model_id!r} did not load within {self.load_timeout_s:g} s; try again.") from None
        except asyncio.CancelledError:
            self._abandon(fut, model_id)
            raise
        return Lease(self, entry, ka)

    def _abandon(self, fut: Future, model_id: str) -> None:
        """A waiter gave up: when the load completes, the lease it was counted in is released."""

        def done(f: Future) -> None:
            if not f.cancelled() and f.exception() is None:
                self._release(f.result(), None)

        fut.add_done_callback(done)

    def _begin(self, model_id: str) -> Future:
        """Count the request in (a lease once the model is loaded) and return a future of its Entry."""
        with self._lock:
            if self._closed:
                raise ModelBusy("The server is shutting down.")
            e = self.entry(model_id)
            e.n_requests += 1
            e.last_used = time.time()
            if e.state == "loaded":
                e.active += 1
                e.expires_at = None
                fut: Future = Future()
                fut.set_result(e)
                return fut
            if e.state in ("loading", "unloading") and e.loading is not None:
                if e.waiters >= self.max_waiting:
                    raise ModelBusy(f"{e.waiters} requests already wait for the model {model_id!r} to load; "
                                    "try again shortly.")  # fmt: skip
                e.waiters += 1
                return e.loading
            if e.state == "unloading":  # loaded again once its runner has stopped (_unload starts it)
                e.waiters = 1
                e.loading = Future()
                return e.loading
            e.state = "loading"
            e.waiters = 1
            e.loading = Future()
            fut = e.loading
        threading.Thread(target=self._load, args=(e, fut), name=f"edgeinfer-load-{model_id}", daemon=True).start()
        return fut

    def _release(self, e: Entry, keep_alive_s: float | None) -> None:
        unload = False
        with self._lock:
            e.active = max(0, e.active - 1)
            e.last_used = time.time()
            ka = self.keep_alive_s if keep_alive_s is None else keep_alive_s
            e.keep_alive_s = ka
            if e.active == 0 and e.state == "loaded":
                if ka == 0 or e.unload_when_idle:
                    unload = True
                    e.state = "unloading"
                else:
                    e.expires_at = None if ka < 0 else self.clock() + ka
            self._lock.notify_all()
        if unload:
            threading.Thread(target=self._unload, args=(e,), name="edgeinfer-unload", daemon=True).start()

    # -- explicit control (POST /models/load, /models/unload)
    def load(self, model_id: str, keep_alive: float | str | None = None) -> Entry:
        """Load a model now (no request): it then stays for keep_alive from now."""
        lease = self.acquire(model_id, keep_alive)
        lease.release()
        return lease.entry

    def unload(self, model_id: str) -> str:
        """Unload a model: "unloaded" (done), "unloading" (when its running requests end), "not_loaded"."""
        with self._lock:
            e = self.entry(model_id)
            if e.state in ("unloaded",):
                return "not_loaded"
            if e.state == "unloading":
                return "unloading"
            if e.state == "loading" or e.active > 0:
                e.unload_when_idle = True
                return "unloading"
            e.state = "unloading"
        self._unload(e)
        return "unloaded"

    # -- loading and unloading
    def _load(self, e: Entry, fut: Future) -> None:
        with self._load_lock:
            try:
                self._make_room(e)
                before = rss_bytes()
                t0 = time.perf_counter()
                llm, runner = self.loader(e.spec)
                load_s = time.perf_counter() - t0
                after = rss_bytes()
            except BaseException as err:  # noqa: BLE001 -- the waiters get it
                with self._lock:
                    e.state, e.loading, e.waiters, e.unload_when_idle = "unloaded", None, 0, False
                    self._lock.notify_all()
                if isinstance(err, (ModelBusy, ModelLoadError)):
                    fut.set_exception(err)
                else:
                    if isinstance(err, EdgeInferError):  # a bad file or setting: its message says it all
                        log.warning("loading %s failed: %s", e.spec.id, err)
                    else:
                        log.exception("loading %s failed", e.spec.id)
                    fut.set_exception(ModelLoadError(f"Loading the model {e.spec.id!r} failed: "
                                                     f"{type(err).__name__}: {err}"))  # fmt: skip
                return
            with self._lock:
                e.llm, e.runner = llm, runner
                e.load_s, e.rss_delta_bytes = load_s, max(0, after - before)
                e.memory_bytes = self.memory_of(e)
                e.loaded_at = time.time()
                e.state = "loaded"
                e.active += e.waiters
                e.waiters = 0
                e.loading = None
                e.expires_at = None
                if e.active == 0:  # every waiter gave up already: keep it as for a finished request
                    e.expires_at = self.clock() + self.keep_alive_s if self.keep_alive_s >= 0 else None
                self._lock.notify_all()
            log.info("loaded %s in %.2f s (%.0f MiB)", e.spec.id, load_s, e.memory_bytes / 2**20)
            fut.set_result(e)

    def _loaded(self) -> list[Entry]:
        return [x for x in self.entries.values() if x.state in ("loaded", "unloading")]

    def _make_room(self, e: Entry) -> None:
        """Unload least recently used idle models until `e` fits max_models and max_memory; wait (bounded)
        while the models in the way are busy."""
        need = e.memory_bytes or e.spec.size_bytes
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            victims = []
            with self._lock:
                loaded = self._loaded()
                count = len(loaded) + 1
                memory = sum(x.memory_bytes for x in loaded) + need
                idle = sorted((x for x in loaded if x.state == "loaded" and x.active == 0 and x.waiters == 0),
                              key=lambda x: x.last_used)  # fmt: skip
                while (count > self.max_models or memory > self.max_memory) and idle:
                    v = idle.pop(0)
                    v.state = "unloading"
                    victims.append(v)
                    count -= 1
                    memory -= v.memory_bytes
                fits = count <= self.max_models and (memory <= self.max_memory or count == 1)
                busy = [x for x in loaded if x.state == "unloading" and x not in victims]
            for v in victims:
                log.info("unloading %s (least recently used) to load %s", v.spec.id, e.spec.id)
                self._unload(v)
            if fits and not busy:
                return
            with self._lock:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ModelBusy(f"No room to load {e.spec.id!r}: the loaded models ("
                                    f"{', '.join(x.spec.id for x in self._loaded())}) are all busy "
                                    f"(--max-models {self.max_models}, --max-memory {self.max_memory >> 20} MiB); "
                                    "try again when one is idle.")  # fmt: skip
                self._lock.wait(timeout=min(left, 1.0))

    def _unload(self, e: Entry) -> None:
        t0 = time.perf_counter()
        runner = e.runner
        try:
            if runner is not None and hasattr(runner, "stop"):
                runner.stop()
        except Exception:
            log.exception("stopping the runner of %s failed", e.spec.id)
        runner = None  # noqa: F841 -- the last reference here: release_memory below frees the model
        if self.on_unload is not None:
            try:
                self.on_unload(e)
            except Exception:
                log.exception("on_unload(%s) failed", e.spec.id)
        with self._lock:
            e.llm = e.runner = None
            e.extra = {}
            e.expires_at = None
            e.unload_when_idle = False
            e.active = 0
        release_memory()
        reload = None
        with self._lock:
            e.unload_s = time.perf_counter() - t0
            if e.loading is not None and e.waiters > 0 and not self._closed:  # asked for while it unloaded
                e.state, reload = "loading", e.loading
            else:
                e.state = "unloaded"
                if e.loading is not None:
                    e.loading.set_exception(ModelBusy("The server is shutting down."))
                    e.loading, e.waiters = None, 0
            self._lock.notify_all()
        log.info("unloaded %s in %.2f s", e.spec.id, e.unload_s)
        if reload is not None:
            threading.Thread(target=self._load, args=(e, reload), name=f"edgeinfer-load-{e.spec.id}",
                             daemon=True).start()  # fmt: skip

    # -- expiry
    def sweep(self) -> list[str]:
        """Unload every idle model whose keep_alive has run out; returns their ids."""
        now = self.clock()
        victims = []
        with self._lock:
            for e in self.entries.values():
                if e.state == "loaded" and e.active == 0 and e.expires_at is not None and e.expires_at <= now:
                    e.state = "unloading"
                    victims.append(e)
        for e in victims:
            self._unload(e)
        return [e.spec.id for e in victims]

    def start(self, interval_s: float = 1.0) -> None:
        """Sweep expired models every interval_s on a daemon thread."""
        if self._sweeper is not None:
            return

        def loop() -> None:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    self._lock.wait(timeout=interval_s)
                    if self._closed:
                        return
                try:
                    self.sweep()
                except Exception:
                    log.exception("sweeping expired models failed")

        self._sweeper = threading.Thread(target=loop, name="edgeinfer-models", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        """Stop sweeping and unload every model (their runners end their requests)."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            loaded = [e for e in self.entries.values() if e.state in ("loaded", "unloading")]
            for e in loaded:
                e.state = "unloading"
        for e in loaded:
            self._unload(e)

    # -- what /models shows
    def status(self) -> list[dict]:
        now, wall = self.clock(), time.time()
        out = []
        with self._lock:
            for e in self.entries.values():
                d = {
                    "id": e.spec.id, "source": e.spec.source, "state": e.state, "active_requests": e.active,
                    "waiting_requests": e.waiters, "size_bytes": e.spec.size_bytes,
                    "memory_bytes": e.memory_bytes if e.state in ("loaded", "unloading") else 0,
                    "last_used": e.last_used or None, "requests_total": e.n_requests,
                    "load_seconds": round(e.load_s, 3) if e.load_s else None,
                    "unload_seconds": round(e.unload_s, 3) if e.unload_s is not None else None,
                    "rss_delta_bytes": e.rss_delta_bytes or None,
                }  # fmt: skip
                if e.state == "loaded":
                    d["loaded_at"] = e.loaded_at
                    d["keep_alive_seconds"] = e.keep_alive_s if e.keep_alive_s is not None else self.keep_alive_s
                    d["expires_at"] = (wall + (e.expires_at - now)) if e.expires_at is not None else None
                    d["unload_when_idle"] = e.unload_when_idle
                out.append(d)
        return out

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return [e.spec.id for e in self.entries.values() if e.state == "loaded"]


def _default_memory(e: Entry) -> int:
    """A loaded model's memory: its file's bytes (weights, mapped or repacked) plus its runner's KV pool."""
    size = e.spec.size_bytes
    path = getattr(e.llm, "path", None)
    if not size and path is not None:
        try:
            size = Path(path).stat().st_size
        except OSError:
            size = 0
    pool = getattr(e.runner, "pool", None)
    return int(size + (getattr(pool, "nbytes", 0) or 0))


__all__ = [
    "DEFAULT_KEEP_ALIVE_S", "DEFAULT_MAX_MODELS", "Entry", "Lease", "ModelBusy", "ModelLoadError", "ModelManager",
    "ModelNotFound", "ModelSpec", "machine_memory_budget", "model_id_for", "parse_bytes", "parse_keep_alive",
    "release_memory", "specs_from", "tune_allocator",
]  # fmt: skip
