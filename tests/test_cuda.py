"""The optional CUDA backend (edgeinfer.kernels.cuda).

Runs everywhere: the build logic against a fake nvcc (command line, -arch, cache reuse and rebuilds,
absent compiler), the availability checks (no driver, no compiler), the split of a model's layers between
a device backend and the CPU (with a recording stand-in for the device), and the backend's own logic on
a numpy stand-in of the library (FakeCudaLib).

Runs only where CUDA is available (a GPU, its driver and nvcc; bench/cuda_check.sh on the GPU machine):
every kernel against the numpy references (edgeinfer.quant's dequantizers, kernels/numpy_ops.py), and
whole models on the GPU against the CPU and against llama.cpp's logits (tests/fixtures/logits_tiny.npz).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from model_writer import random_kquant
from reference_model import LLAMACPP_TINY, write_llamacpp_tiny, write_tiny_model

import edgeinfer
from edgeinfer.kernels.base import HeadSpec
from edgeinfer.arch import build_model
from edgeinfer.engine.kv_cache import KVCache
from edgeinfer.errors import EdgeInferError
from edgeinfer.gguf import GGUFFile
from edgeinfer.kernels import cuda, get_backend, numpy_ops
from edgeinfer.kernels.base import QTensor
from edgeinfer.kernels.cuda import build, driver, offload
from edgeinfer.kernels.cuda.backend import CudaBackend
from edgeinfer.kernels.cuda.binding import EXPORTED, CudaError
from edgeinfer.kernels.numba import NumbaBackend
from edgeinfer.kernels.reference import ReferenceBackend
from edgeinfer.quant import dequantize, quantize

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
CUDA_SOURCES = REPO / "native" / "cuda"
KQUANTS = (T.Q4_K, T.Q5_K, T.Q6_K)


@pytest.fixture(autouse=True)
def _no_gpu_noted(monkeypatch):
    """load(n_gpu_layers=...) notes a GPU in use for the process's energy meters: not past a test."""
    from edgeinfer import energy

    monkeypatch.setattr(energy, "_GPUS_IN_USE", [])


# -- a fake nvcc ---------------------------------------------------------------------------------------

FAKE_NVCC = """#!%(python)s
import json, os, sys
args = sys.argv[1:]
if args == ["--version"]:
    print("nvcc: NVIDIA (R) Cuda compiler driver")
    print("Cuda compilation tools, release %(release)s, V%(release)s.99")
    sys.exit(0)
if args == ["--list-gpu-arch"]:
    print("\\n".join("compute_" + a for a in %(archs)r))
    sys.exit(0)
with open(os.environ["FAKE_NVCC_LOG"], "a") as fh:
    fh.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_NVCC_FAIL"):
    print("kernel.cu(3): error: expected a ';'", file=sys.stderr)
    sys.exit(2)
out = args[args.index("-o") + 1]
with open(out, "wb") as fh:
    fh.write(b"not really a shared library")
"""


def _write_nvcc(directory: Path, release: str = "12.4", archs=("50", "75", "80", "86", "89", "90")) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    nvcc = directory / "nvcc"
    nvcc.write_text(FAKE_NVCC % {"python": sys.executable, "release": release, "archs": list(archs)})
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return nvcc


@pytest.fixture
def no_toolkit(monkeypatch, tmp_path):
    """An environment where no nvcc can be found: empty PATH entries, no CUDA_HOME, no wheels, no
    /usr/local/cuda; EDGEINFER_HOME in tmp; sources copied to tmp (tests edit them)."""
    for var in ("EDGEINFER_NVCC", "CUDA_HOME", "CUDA_PATH", "EDGEINFER_NVCC_FLAGS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(build, "_wheel_nvccs", lambda: [])
    monkeypatch.setattr(build, "DEFAULT_TOOLKIT", tmp_path / "no-cuda")
    sources = tmp_path / "sources"
    sources.mkdir()
    for p in CUDA_SOURCES.iterdir():
        (sources / p.name).write_bytes(p.read_bytes())
    monkeypatch.setenv("EDGEINFER_CUDA_SOURCES", str(sources))
    monkeypatch.setenv("FAKE_NVCC_LOG", str(tmp_path / "nvcc.log"))
    return tmp_path


def _calls(tmp_path) -> list[list[str]]:
    log = tmp_path / "nvcc.log"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def test_build_command_and_cache(no_toolkit, monkeypatch):
    tmp = no_toolkit
    nvcc = _write_nvcc(tmp / "bin")
    monkeypatch.setenv("PATH", str(tmp / "bin"))
    assert build.find_nvcc() == nvcc
    lib = build.library_path(cc=(9, 0))
    (args,) = _calls(tmp)
    assert "-arch=sm_90" in args
    for flag in ("-O3", "-shared", "-std=c++17"):
        assert flag in args
    assert args[args.index("-Xcompiler") + 1] == "-fPIC"
    assert sorted(Path(a).name for a in args if a.endswith(".cu")) == sorted(p.name for p in CUDA_SOURCES.glob("*.cu"))
    assert args[args.index("-I") + 1] == str(tmp / "sources")
    # the library lands in $EDGEINFER_HOME/cuda/<key>/, with a manifest
    assert lib.name == "libedgeinfer_cuda.so" and lib.parent.parent == tmp / "home" / "cuda"
    manifest = json.loads((lib.parent / "manifest.json").read_text())
    assert manifest["targets"] == ["90"] and "release 12.4" in manifest["nvcc_version"]
    assert manifest["sources_sha256"] == build.sources_digest(tmp / "sources")
    assert (lib.parent / "build.log").is_file()
    # a second call reuses it
    assert build.library_path(cc=(9, 0)) == lib
    assert len(_calls(tmp)) == 1
    # another GPU: another target, another library
    lib86 = build.library_path(cc=(8, 6))
    assert lib86 != lib and "-arch=sm_86" in _calls(tmp)[-1]
    # changed sources rebuild
    with open(tmp / "sources" / "ops.cu", "a") as fh:
        fh.write("\n// changed\n")
    lib2 = build.library_path(cc=(9, 0))
    assert lib2 != lib and len(_calls(tmp)) == 3
    # another nvcc version rebuilds too
    _write_nvcc(tmp / "bin", release="13.0")
    build._VERSION_CACHE.clear()
    assert build.library_path(cc=(9, 0)) != lib2 and len(_calls(tmp)) == 4


def test_build_without_a_known_gpu_targets_a_list(no_toolkit, monkeypatch):
    tmp = no_toolkit
    _write_nvcc(tmp / "bin", archs=("75", "80", "86", "90", "100"))
    monkeypatch.setenv("PATH", str(tmp / "bin"))
    lib = build.library_path(cc=None)
    args = _calls(tmp)[0]
    gencode = [a for a in args if a.startswith("-gencode")]
    assert gencode == [
        "-gencode=arch=compute_75,code=sm_75",
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_86,code=sm_86",
        "-gencode=arch=compute_90,code=sm_90",  # 89 is not in this nvcc's list
        "-gencode=arch=compute_90,code=compute_90",  # PTX for what comes later
    ]
    manifest = json.loads((lib.parent / "manifest.json").read_text())
    assert manifest["ptx"] and manifest["targets"] == ["75", "80", "86", "90"]
    assert build.arch_flags((12, 0)) == ["-arch=sm_120"]


def test_nvcc_search_order(no_toolkit, monkeypatch):
    tmp = no_toolkit
    assert build.find_nvcc() is None
    # an installed nvidia-cuda-nvcc wheel (CUDA 13 layout) on sys.path
    site = tmp / "site"
    wheel_nvcc = _write_nvcc(site / "nvidia" / "cu13" / "bin")
    (site / "nvidia" / "cu13" / "lib").mkdir()
    (site / "nvidia" / "cu13" / "lib" / "libcudart_static.a").write_bytes(b"")
    monkeypatch.undo()  # restores the real _wheel_nvccs (and the rest; set again below)
    monkeypatch.setattr(sys, "path", [str(site)])
    monkeypatch.setattr(build, "DEFAULT_TOOLKIT", tmp / "no-cuda")
    monkeypatch.setenv("PATH", str(tmp / "empty-bin"))
    for var in ("EDGEINFER_NVCC", "CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    assert build.find_nvcc() == wheel_nvcc
    assert build.toolkit_flags(wheel_nvcc) == ["-L", str(site / "nvidia" / "cu13" / "lib")]
    # /usr/local/cuda before the wheel
    toolkit_nvcc = _write_nvcc(tmp / "toolkit" / "bin")
    monkeypatch.setattr(build, "DEFAULT_TOOLKIT", tmp / "toolkit")
    assert build.find_nvcc() == toolkit_nvcc
    # CUDA_HOME before that, PATH before that, EDGEINFER_NVCC first
    home_nvcc = _write_nvcc(tmp / "cuda-home" / "bin")
    monkeypatch.setenv("CUDA_HOME", str(tmp / "cuda-home"))
    assert build.find_nvcc() == home_nvcc
    path_nvcc = _write_nvcc(tmp / "on-path")
    monkeypatch.setenv("PATH", str(tmp / "on-path"))
    assert build.find_nvcc() == path_nvcc
    chosen = _write_nvcc(tmp / "chosen")
    monkeypatch.setenv("EDGEINFER_NVCC", str(chosen))
    assert build.find_nvcc() == chosen


def test_no_nvcc_is_a_clear_reason(no_toolkit, monkeypatch):
    with pytest.raises(build.CudaBuildError, match="No nvcc"):
        build.library_path(cc=(9, 0))
    monkeypatch.setattr(cuda, "probe", lambda: driver.DriverInfo(True, "", 13000, (driver.GPU(0, "Fake GPU", (9, 0)),)))
    reason = cuda.unavailable_reason()
    assert "nvcc" in reason and "pip install nvidia-cuda-nvcc" in reason
    assert not cuda.available()


def test_cached_library_is_used_without_nvcc(no_toolkit, monkeypatch):
    tmp = no_toolkit
    _write_nvcc(tmp / "bin")
    monkeypatch.setenv("PATH", str(tmp / "bin"))
    lib = build.library_path(cc=(9, 0))
    monkeypatch.setenv("PATH", str(tmp / "empty-bin"))  # the compiler is gone
    assert build.find_nvcc() is None
    assert build.library_path(cc=(9, 0)) == lib
    assert build.cached_library(cc=(8, 0)) is None  # built for sm_90 only, no PTX
    monkeypatch.setattr(cuda, "probe", lambda: driver.DriverInfo(True, "", 13000, (driver.GPU(0, "Fake", (9, 0)),)))
    monkeypatch.setattr(driver, "compute_capability", lambda device=0: (9, 0))
    assert cuda.available()


def test_failed_build_says_why(no_toolkit, monkeypatch):
    tmp = no_toolkit
    _write_nvcc(tmp / "bin")
    monkeypatch.setenv("PATH", str(tmp / "bin"))
    monkeypatch.setenv("FAKE_NVCC_FAIL", "1")
    with pytest.raises(build.CudaBuildError, match="expected a ';'") as e:
        build.library_path(cc=(9, 0))
    assert "build.log" in str(e.value)
    assert not list((tmp / "home" / "cuda").glob("*/libedgeinfer_cuda.so"))


def test_no_driver_means_unavailable(monkeypatch):
    monkeypatch.setattr(driver, "load_libcuda", lambda: (None, "no NVIDIA driver here (libcuda.so.1 ... not found)"))
    monkeypatch.setattr(driver, "_PROBE", None)
    assert not cuda.available()
    assert "no NVIDIA driver" in cuda.unavailable_reason()
    with pytest.raises(EdgeInferError, match="CUDA is unavailable.*no NVIDIA driver"):
        get_backend("cuda")
    monkeypatch.setattr(driver, "_PROBE", None)


def test_probe_on_this_machine_never_raises():
    info = driver.probe(refresh=True)
    assert info.ok or info.reason
    assert cuda.available() in (True, False)


def test_the_real_library_without_a_gpu(tmp_path, monkeypatch):
    """Where a real nvcc exists but no GPU (a developer's machine with the nvidia-cuda-nvcc wheel): the
    library builds, exports every symbol the binding uses, and reports the missing device in a sentence."""
    nvcc = build.find_nvcc()
    if nvcc is None or driver.probe().ok:
        pytest.skip("needs a real nvcc on a machine without a GPU")
    import subprocess

    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path))
    lib = build.library_path(cc=(9, 0))
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True)
    exported = {line.split()[-1] for line in out.stdout.splitlines() if " T " in line}
    assert set(EXPORTED) <= exported
    assert all(s.startswith("ei_cuda_") for s in exported if not s.startswith("_"))
    from edgeinfer.kernels.cuda.binding import CudaLib

    with pytest.raises(CudaError, match="driver|device"):
        CudaLib(lib)


# -- the split of layers -----------------------------------------------------------------------------


class RecordingBackend(NumbaBackend):
    """A stand-in for a device: the numba kernels, recording the weights it multiplies and the ops it runs."""

    def __init__(self, name="fake-gpu", free=8 << 30, total=16 << 30):
        super().__init__(1)
        self.name = name
        self.device_name = name
        self.free, self.total = free, total
        self.weights: list[str] = []
        self.ops: list[str] = []

    def matmul(self, w, x, out=None):
        self.weights.append(w.name)
        return super().matmul(w, x, out)

    def rms_norm(self, x, weight, eps):
        self.ops.append("rms_norm")
        return super().rms_norm(x, weight, eps)

    def attention(self, *a, **kw):
        self.ops.append("attention")
        return super().attention(*a, **kw)

    def mem_info(self):
        return self.free, self.total

    def layers(self) -> set[int]:
        return {int(n.split(".")[1]) for name in self.weights for n in name.split("+") if n.startswith("blk.")}

    def head(self) -> bool:
        return any(n in ("output.weight", "token_embd.weight") for n in self.weights)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("cuda") / "llama.gguf", "llama", T.Q8_0, n_layer=4, vocab=True)


def _run(path, backend, layer_backend=None, n=9):
    model = build_model(GGUFFile(path), backend, layer_backend=layer_backend)
    tokens = np.random.default_rng(0).integers(0, 256, n).astype(np.int32)
    return model.forward(tokens, KVCache.for_model(model, 16))


def test_plan_layers():
    sizes = [10, 10, 10, 10]
    assert offload.plan_layers(sizes, 5, None, 0) == (0, False)
    assert offload.plan_layers(sizes, 5, None, 2) == (2, False)
    assert offload.plan_layers(sizes, 5, None, 4) == (4, True)
    assert offload.plan_layers(sizes, 5, None, 99) == (4, True)
    assert offload.plan_layers(sizes, 5, 1000, -1) == (4, True)
    assert offload.plan_layers(sizes, 5, 42, -1) == (4, False)  # every layer fits, the head does not
    assert offload.plan_layers(sizes, 5, 45, -1) == (4, True)
    assert offload.plan_layers(sizes, 5, 29, -1) == (2, False)
    assert offload.plan_layers(sizes, 5, 5, -1) == (0, False)
    for bad in (-2, 1.5, "3", True, None):
        with pytest.raises(EdgeInferError, match="n_gpu_layers"):
            offload.check_n_gpu_layers(bad)


def test_layer_sizes(tiny_llama):
    f = GGUFFile(tiny_llama)
    sizes, head = offload.layer_sizes(f)
    assert len(sizes) == 4 and len(set(sizes)) == 1
    assert sizes[0] == sum(t.n_bytes for n, t in f.tensors.items() if n.startswith("blk.0."))
    # tied: the head is token_embd (and output_norm)
    assert head == f.tensors["token_embd.weight"].n_bytes + f.tensors["output_norm.weight"].n_bytes


@pytest.mark.parametrize("n_gpu", [0, 1, 3, 4, -1])
def test_layers_run_where_the_plan_puts_them(tiny_llama, n_gpu):
    host, device = RecordingBackend("cpu"), RecordingBackend()
    plan = offload.plan_offload(GGUFFile(tiny_llama), host, n_gpu, device=device)
    expected = 4 if n_gpu == -1 else n_gpu
    assert plan.n_gpu_layers == expected
    assert plan.head_on_device == (expected == 4)
    logits = _run(tiny_llama, host, plan.layer_backend if n_gpu else None)
    assert device.layers() == set(range(expected))
    assert host.layers() == set(range(expected, 4))
    assert device.head() == (expected == 4) and host.head() == (expected < 4)
    assert ("attention" in device.ops) == (expected > 0)
    # the same kernels on both sides: the same bits as everything on the CPU
    assert np.array_equal(logits, _run(tiny_llama, NumbaBackend(1)))


def test_minus_one_takes_what_fits(tiny_llama):
    f = GGUFFile(tiny_llama)
    sizes, head = offload.layer_sizes(f)
    host = RecordingBackend("cpu")
    reserve = offload.reserve_bytes(16 << 30)
    device = RecordingBackend(free=reserve + 2 * sizes[0] + 1)
    plan = offload.plan_offload(f, host, -1, device=device)
    assert (plan.n_gpu_layers, plan.head_on_device) == (2, False)
    device = RecordingBackend(free=reserve + sum(sizes) + head - 1)
    plan = offload.plan_offload(f, host, -1, device=device)
    assert (plan.n_gpu_layers, plan.head_on_device) == (4, False)  # every layer fits, the head does not
    assert "layers 0-3 of 4" in plan.describe()
    _run(tiny_llama, host, plan.layer_backend)
    assert device.layers() == {0, 1, 2, 3} and not device.head() and host.head()
    # explicit N that does not fit is an error that says what to do
    device = RecordingBackend(free=reserve + sizes[0])
    with pytest.raises(EdgeInferError, match=r"need .* GiB .*-ngl -1"):
        offload.plan_offload(f, host, 3, device=device)


def test_explicit_layers_without_cuda(tiny_llama, monkeypatch):
    monkeypatch.setattr(offload, "open_device", lambda host, device=0: (None, "no NVIDIA driver here"))
    host = NumbaBackend(1)
    with pytest.raises(EdgeInferError, match="n_gpu_layers=2 .*CUDA is unavailable here: no NVIDIA driver"):
        offload.plan_offload(GGUFFile(tiny_llama), host, 2)
    with pytest.warns(RuntimeWarning, match="n_gpu_layers=-1: CUDA is unavailable"):
        plan = offload.plan_offload(GGUFFile(tiny_llama), host, -1)
    assert plan.n_gpu_layers == 0 and plan.layer_backend(0) is host and plan.layer_backend(4) is host


def test_load_with_n_gpu_layers(tiny_llama, monkeypatch):
    devices = []

    def fake_device(host, device=0):
        devices.append(RecordingBackend())
        return devices[-1], ""

    monkeypatch.setattr(offload, "open_device", fake_device)
    llm = edgeinfer.load(str(tiny_llama), n_ctx=32, backend="numba", n_threads=1, n_gpu_layers=3)
    assert llm.offload.n_gpu_layers == 3 and not llm.offload.head_on_device
    ids = [1, 5, 9, 33]
    logits = llm.logits(ids)
    assert devices[0].layers() == {0, 1, 2}
    cpu = edgeinfer.load(str(tiny_llama), n_ctx=32, backend="numba", n_threads=1)
    assert cpu.offload is None
    assert np.array_equal(logits, cpu.logits(ids))
    # generation goes through the same split
    devices[0].weights.clear()
    assert llm.generate(ids, max_tokens=3, temperature=0) == cpu.generate(ids, max_tokens=3, temperature=0)
    assert devices[0].layers() == {0, 1, 2}


def test_load_without_cuda(tiny_llama, monkeypatch):
    monkeypatch.setattr(offload, "open_device", lambda host, device=0: (None, "no NVIDIA driver here"))
    with pytest.raises(EdgeInferError, match="CUDA is unavailable"):
        edgeinfer.load(str(tiny_llama), n_ctx=32, backend="numba", n_gpu_layers=2)
    with pytest.warns(RuntimeWarning, match="every layer runs on the CPU"):
        llm = edgeinfer.load(str(tiny_llama), n_ctx=32, backend="numba", n_gpu_layers=-1)
    assert llm.offload.n_gpu_layers == 0
    with pytest.raises(EdgeInferError, match="n_gpu_layers"):
        edgeinfer.load(str(tiny_llama), n_ctx=32, backend="numba", n_gpu_layers=-5)


# -- the backend's logic on a numpy stand-in of the library -------------------------------------------


class FakeCudaLib:
    """CudaLib's methods in numpy (dequantize then multiply; numpy_ops for the rest): what the kernels
    must compute. Records the calls and can refuse uploads (a full GPU)."""

    TYPES = {int(t) for t in (T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL, *KQUANTS)}

    def __init__(self, free=8 << 30, full=False):
        self.info = {"name": "Fake GPU", "compute_capability": (9, 0), "n_sm": 132, "total_memory": 16 << 30}
        self.free_bytes, self.full = free, full
        self.buffers: dict[int, tuple[np.ndarray, int]] = {}
        self.calls: list[str] = []
        self.freed: list[int] = []

    def supports(self, t):
        return int(t) in self.TYPES

    def mem_info(self):
        return self.free_bytes, self.info["total_memory"]

    def upload(self, raw):
        if self.full:
            raise CudaError("cudaMalloc failed: out of memory (cudaErrorMemoryAllocation)")
        handle = 4096 * (len(self.buffers) + len(self.freed) + 1)
        self.buffers[handle] = (np.array(raw, copy=True), 0)
        return handle

    def free(self, handle):
        self.freed.append(handle)
        del self.buffers[handle]

    def matmul(self, t, handle, n_rows, n_cols, row_bytes, x, y):
        self.calls.append("matmul")
        raw = self.buffers[handle][0]
        assert raw.shape == (n_rows, row_bytes) and x.flags.c_contiguous and y.flags.c_contiguous
        w = dequantize(raw, T(t), (n_rows, n_cols)).astype(np.float64)
        y[...] = (x.astype(np.float64) @ w.T).astype(np.float32)

    def rms_norm(self, x, w, eps, out):
        self.calls.append("rms_norm")
        out[...] = numpy_ops.rms_norm(x, w, eps)

    def rope(self, x, cos, sin, n_rot, neox, out):
        self.calls.append("rope")
        out[...] = numpy_ops.rope(x, np.arange(len(x)), cos, sin, n_rot, neox)

    def qkv(self, qkv, n_head, n_head_kv, head_dim, head_dim_v, cos, sin, n_rot, neox, q_norm, k_norm, eps, q, k, v):
        self.calls.append("qkv")
        n = len(qkv)
        ks = np.zeros((n, n_head_kv, head_dim), np.float32)
        vs = np.zeros((n, n_head_kv, head_dim_v), np.float32)
        q[...] = numpy_ops.qkv_store(qkv, n_head, n_head_kv, head_dim, head_dim_v, np.arange(n), cos, sin, n_rot,
                                     neox, q_norm, k_norm, eps, ks, vs, np.arange(n))  # fmt: skip
        k[...], v[...] = ks, vs

    def attention(self, q, k, v, q_pos, kv_pos, cells, n_swa, scale, out):
        self.calls.append("attention")
        out[...] = numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, scale, cells)

    def glu(self, gu, act, out):
        self.calls.append("glu")
        out[...] = numpy_ops.glu(gu, act)


def _fake_backend(**kw):
    return CudaBackend(host=NumbaBackend(1), lib=FakeCudaLib(**kw))


@pytest.mark.parametrize("arch, wtype", [("llama", T.Q4_0), ("qwen3", T.Q8_0), ("gemma3", T.Q4_K), ("llama", T.Q2_K)])
def test_backend_logic_on_a_stand_in(tmp_path, arch, wtype):
    kw = dict(n_embd=256, n_ff=512, head_dim=64) if wtype in (T.Q4_K, T.Q2_K) else {}
    if arch == "gemma3":
        kw.update(n_layer=6, n_swa=5)
    path = write_tiny_model(tmp_path / "m.gguf", arch, wtype, **kw)
    cpu = _run(path, ReferenceBackend(), n=13)
    be = CudaBackend(host=ReferenceBackend(), lib=FakeCudaLib())  # float32 on both sides
    gpu = _run(path, ReferenceBackend(), lambda il: be, n=13)
    scale = float(np.abs(cpu).max())
    assert np.abs(gpu - cpu).max() <= 1e-4 * scale
    if wtype == T.Q2_K:  # no CUDA kernel: every matmul on the host
        assert "matmul" not in be.lib.calls and be.bytes_on_device == 0
    else:
        assert {"matmul", "qkv", "attention", "rms_norm", "glu"} <= set(be.lib.calls)
    # token by token through the cache gives the same
    model = build_model(GGUFFile(path), ReferenceBackend(), layer_backend=lambda il: be)
    cache = KVCache.for_model(model, 16)
    tokens = np.random.default_rng(0).integers(0, 256, 13).astype(np.int32)
    rows = [model.forward(tokens[i : i + 1], cache) for i in range(13)]
    assert np.abs(np.concatenate(rows) - cpu).max() <= 1e-4 * scale


def test_backend_small_ops_on_the_host(tiny_llama):
    be = CudaBackend(host=NumbaBackend(1), lib=FakeCudaLib(), small_ops="host")
    _run(tiny_llama, ReferenceBackend(), lambda il: be)
    assert set(be.lib.calls) == {"matmul", "attention"}
    with pytest.raises(ValueError, match="small_ops"):
        CudaBackend(host=NumbaBackend(1), lib=FakeCudaLib(), small_ops="sometimes")


def test_backend_matmul_out_and_weights():
    rng = np.random.default_rng(1)
    raw = quantize(rng.normal(size=(40, 64)).astype(np.float32), T.Q8_0)
    w = QTensor("w", T.Q8_0, (64, 40), raw)
    be = _fake_backend()
    x = rng.normal(size=(3, 64)).astype(np.float32)
    ref = x.astype(np.float64) @ dequantize(raw, T.Q8_0, (40, 64)).astype(np.float64).T
    y = be.matmul(w, x)
    assert np.allclose(y, ref, rtol=1e-5, atol=1e-5)
    out = np.zeros((3, 40), np.float32)
    assert be.matmul(w, x, out) is out and np.array_equal(out, y)
    wide = np.zeros((3, 80), np.float32)
    half = wide[:, :40]  # not C-contiguous: written through
    assert be.matmul(w, x, half) is half and np.array_equal(wide[:, :40], y)
    assert be.matmul(w, x[:, None, :][:, 0, :].astype(np.float64)).dtype == np.float32
    with pytest.raises(ValueError):
        be.matmul(w, x[:, :32])
    assert len(be.lib.buffers) == 1 and be.bytes_on_device == raw.nbytes  # uploaded once
    del w
    import gc

    gc.collect()
    assert be.lib.freed and not be.lib.buffers and be.bytes_on_device == 0  # freed with the weight


def test_backend_when_the_gpu_is_full():
    rng = np.random.default_rng(2)
    raw = quantize(rng.normal(size=(8, 32)).astype(np.float32), T.Q4_0)
    w = QTensor("w", T.Q4_0, (32, 8), raw)
    be = _fake_backend(full=True)
    x = rng.normal(size=(2, 32)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="does not fit on the GPU"):
        y = be.matmul(w, x)
    assert np.allclose(y, NumbaBackend(1).matmul(w, x))
    assert "matmul" not in be.lib.calls


@pytest.mark.parametrize("kv_type", ["f32", "f16", "q8_0"])
def test_backend_attention_reads_the_cells(kv_type):
    """The host's cache in any format: qkv_store writes it as the host would, attention gathers the
    sequence's cells and converts them to float32 for the GPU."""
    from edgeinfer.nn.kv import KV_TYPES

    t = KV_TYPES[kv_type]
    rng = np.random.default_rng(3)
    be = _fake_backend()
    k = np.zeros((40, 2, t.row_size(32)), t.dtype)
    v = np.zeros((40, 2, t.row_size(64)), t.dtype)
    numpy_ops.kv_store(k, slice(None), rng.normal(size=(40, 2, 32)).astype(np.float32))
    numpy_ops.kv_store(v, slice(None), rng.normal(size=(40, 2, 64)).astype(np.float32))
    q = rng.normal(size=(3, 4, 32)).astype(np.float32)
    cells = rng.permutation(40)[:7].astype(np.int32)
    kv_pos = np.arange(7, dtype=np.int32)
    q_pos = np.array([4, 5, 6], np.int32)
    ref = numpy_ops.attention(q, k, v, q_pos, kv_pos, 0, 0.25, cells)
    assert np.allclose(be.attention(q, k, v, q_pos, kv_pos, 0, 0.25, cells), ref, atol=1e-6)
    qkv = rng.normal(size=(2, 4 * 32 + 2 * 32 + 2 * 64)).astype(np.float32)
    cos, sin = np.ones((8, 16), np.float32), np.zeros((8, 16), np.float32)
    k_host, v_host = k.copy(), v.copy()
    pos = np.array([1, 2], np.int32)
    be.qkv_store(qkv, HeadSpec(4, 2, 32, 64, 32, True, None, None, 0.0), pos, cos, sin, k, v, cells[:2])
    numpy_ops.qkv_store(qkv, 4, 2, 32, 64, pos, cos, sin, 32, True, None, None, 0.0, k_host, v_host, cells[:2])
    assert "qkv" in be.lib.calls and np.array_equal(k, k_host) and np.array_equal(v, v_host)


# -- the kernels themselves (a GPU) ----------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not cuda.available(), reason=f"CUDA unavailable: {cuda.unavailable_reason()}")


@pytest.fixture(scope="module")
def lib():
    from edgeinfer.kernels.cuda.binding import open_library

    return open_library()


def _weight(t: T, n_rows: int, n_cols: int, rng) -> np.ndarray:
    x = rng.normal(0.0, 1.0, (n_rows, n_cols)).astype(np.float32)
    if t == T.F32:
        return x.view(np.uint8).reshape(n_rows, -1)
    if t == T.F16:
        return x.astype(np.float16).view(np.uint8).reshape(n_rows, -1)
    if t == T.BF16:
        return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_rows, -1)
    if t in KQUANTS:
        return random_kquant(n_rows, n_cols, t, 1.0, rng)
    return quantize(x, t)


MATMUL_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL, *KQUANTS]


@needs_cuda
@pytest.mark.parametrize("t", MATMUL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 2, 3, 7, 8, 9, 64, 130])
def test_kernel_matmul(lib, t, n_tokens):
    rng = np.random.default_rng(int(t) * 1000 + n_tokens)
    n_rows, n_cols = 333, 512
    raw = _weight(t, n_rows, n_cols, rng)
    assert lib.supports(int(t))
    handle = lib.upload(raw)
    try:
        x = rng.normal(size=(n_tokens, n_cols)).astype(np.float32)
        y = np.full((n_tokens, n_rows), np.nan, np.float32)  # poisoned: every element must be written
        lib.matmul(int(t), handle, n_rows, n_cols, raw.shape[1], x, y)
    finally:
        lib.free(handle)
    w = dequantize(raw, t, (n_rows, n_cols)).astype(np.float64)  # edgeinfer.quant's numpy reference
    ref = x.astype(np.float64) @ w.T
    assert np.isfinite(y).all()
    err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert err < 1e-5, f"{t.name} x {n_tokens}: relative error {err:.2e}"
    import gguf

    assert np.allclose(gguf.quants.dequantize(raw, t).reshape(n_rows, n_cols), w)  # the second oracle


@needs_cuda
def test_kernel_matmul_errors(lib):
    raw = quantize(np.ones((4, 64), np.float32), T.Q8_0)
    handle = lib.upload(raw)
    try:
        with pytest.raises(CudaError, match="bytes"):
            lib.matmul(int(T.Q8_0), handle, 4, 64, raw.shape[1] + 2, np.ones((1, 64), np.float32), np.empty((1, 4), np.float32))
        with pytest.raises(ValueError):
            lib.matmul(int(T.Q8_0), handle, 4, 64, raw.shape[1], np.ones((1, 32), np.float32), np.empty((1, 4), np.float32))
        assert not lib.supports(int(T.Q2_K))
    finally:
        lib.free(handle)
    free, total = lib.mem_info()
    assert 0 < free <= total


@needs_cuda
@pytest.mark.parametrize("shape", [(1, 576), (37, 640), (5, 3, 64), (2, 8192)])
def test_kernel_rms_norm(lib, shape):
    rng = np.random.default_rng(len(shape))
    x = rng.normal(size=shape).astype(np.float32)
    w = rng.normal(1.0, 0.1, shape[-1]).astype(np.float32)
    out = np.full((x.size // shape[-1], shape[-1]), np.nan, np.float32)
    lib.rms_norm(x.reshape(-1, shape[-1]), w, 1e-6, out)
    np.testing.assert_allclose(out.reshape(shape), numpy_ops.rms_norm(x, w, 1e-6), rtol=1e-5, atol=1e-5)


def _tables(n_pos, n_rot, base=10000.0):
    inv = base ** (-np.arange(0, n_rot, 2) / n_rot)
    ang = np.arange(n_pos)[:, None] * inv
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@needs_cuda
@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("n_rot", [64, 32])
def test_kernel_rope(lib, neox, n_rot):
    rng = np.random.default_rng(n_rot + neox)
    x = rng.normal(size=(11, 5, 64)).astype(np.float32)
    pos = rng.integers(0, 300, 11)
    cos, sin = _tables(300, n_rot)
    out = np.full_like(x, np.nan)
    lib.rope(x, np.ascontiguousarray(cos[pos]), np.ascontiguousarray(sin[pos]), n_rot, neox, out)
    np.testing.assert_allclose(out, numpy_ops.rope(x, pos, cos, sin, n_rot, neox), rtol=1e-5, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("heads", [(9, 3, 64, 64), (4, 1, 256, 256), (8, 2, 128, 64)])
def test_kernel_qkv(lib, norm, heads):
    h, hkv, d, dv = heads
    rng = np.random.default_rng(h + d)
    n = 6
    qkv = rng.normal(size=(n, (h + hkv) * d + hkv * dv)).astype(np.float32)
    pos = rng.integers(0, 50, n)
    cos, sin = _tables(50, d)
    qn = rng.normal(1, 0.2, d).astype(np.float32) if norm else None
    kn = rng.normal(1, 0.2, d).astype(np.float32) if norm else None
    q = np.full((n, h, d), np.nan, np.float32)
    k = np.full((n, hkv, d), np.nan, np.float32)
    v = np.full((n, hkv, dv), np.nan, np.float32)
    lib.qkv(qkv, h, hkv, d, dv, np.ascontiguousarray(cos[pos]), np.ascontiguousarray(sin[pos]), d, True, qn, kn, 1e-6,
            q, k, v)  # fmt: skip
    ks, vs = np.zeros((n, hkv, d), np.float32), np.zeros((n, hkv, dv), np.float32)
    q_ref = numpy_ops.qkv_store(qkv, h, hkv, d, dv, pos, cos, sin, d, True, qn, kn, 1e-6, ks, vs, np.arange(n))
    np.testing.assert_allclose(q, q_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(k, ks, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(v, vs)


@needs_cuda
@pytest.mark.parametrize(
    "n, n_kv, h, hkv, d, dv, n_swa",
    [(1, 1, 4, 4, 64, 64, 0), (1, 300, 9, 3, 64, 64, 0), (20, 150, 8, 2, 128, 128, 0), (7, 260, 4, 1, 256, 256, 64),
     (130, 130, 2, 1, 64, 512, 0)],
)  # fmt: skip
@pytest.mark.parametrize("paged", [False, True])
def test_kernel_attention(lib, n, n_kv, h, hkv, d, dv, n_swa, paged):
    rng = np.random.default_rng(n * 7 + n_kv)
    n_cells = n_kv + 50 if paged else n_kv
    k = rng.normal(size=(n_cells, hkv, d)).astype(np.float32)
    v = rng.normal(size=(n_cells, hkv, dv)).astype(np.float32)
    q = rng.normal(size=(n, h, d)).astype(np.float32)
    kv_pos = np.arange(n_kv, dtype=np.int32)
    q_pos = kv_pos[-n:].copy()
    cells = rng.permutation(n_cells)[:n_kv].astype(np.int32) if paged else None
    out = np.full((n, h * dv), np.nan, np.float32)
    scale = 1.0 / np.sqrt(d)
    lib.attention(q, k, v, q_pos, kv_pos, cells, n_swa, scale, out)
    ref = numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, scale, cells)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_kernel_glu(lib, act):
    rng = np.random.default_rng(5)
    gu = (rng.normal(size=(13, 2 * 1536)) * 4).astype(np.float32)
    out = np.full((13, 1536), np.nan, np.float32)
    lib.glu(gu, act, out)
    np.testing.assert_allclose(out, numpy_ops.glu(gu, act), rtol=2e-5, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("arch, wtype", [("llama", T.Q4_1), ("qwen3", T.Q8_0), ("gemma3", T.Q4_K), ("gemma3", T.Q6_K)])
def test_gpu_model_equals_the_cpu(tmp_path, arch, wtype):
    """Every layer and the head on the GPU against the float32 reference backend on the CPU."""
    kw = dict(n_embd=256, n_ff=512, head_dim=64) if wtype in KQUANTS else {}
    if arch == "gemma3":
        kw.update(n_layer=6, n_swa=5)
    path = write_tiny_model(tmp_path / "m.gguf", arch, wtype, **kw)
    cpu = _run(path, ReferenceBackend(), n=14)
    be = CudaBackend(host=NumbaBackend())
    gpu = _run(path, ReferenceBackend(), lambda il: be, n=14)
    assert np.abs(gpu - cpu).max() <= 1e-4 * float(np.abs(cpu).max())
    cpu_be = ReferenceBackend()
    half = _run(path, cpu_be, lambda il: be if il < 2 else cpu_be, n=14)
    assert np.abs(half - cpu).max() <= 1e-4 * float(np.abs(cpu).max())


@needs_cuda
@pytest.mark.parametrize("name", list(LLAMACPP_TINY))
def test_gpu_models_match_llama_cpp(name, tmp_path_factory):
    """llama.cpp's logits on its tiny models (tests/fixtures/logits_tiny.npz), everything on the GPU;
    the tolerance of tests/test_arch.py."""
    fixture = np.load(FIXTURES / "logits_tiny.npz")
    paths = write_llamacpp_tiny(tmp_path_factory.mktemp("llamacpp_tiny"))
    ids, theirs = fixture["ids"], fixture[f"{name}.logits"].astype(np.float32)
    be = CudaBackend(host=NumbaBackend())
    model = build_model(GGUFFile(paths[name]), NumbaBackend(), layer_backend=lambda il: be)
    ours = model.forward(ids, KVCache.for_model(model, 32))
    scale = float(np.abs(theirs).max())
    assert np.abs(ours - theirs).max() <= 0.06 * scale
    assert np.abs(ours - theirs).mean() <= 0.01 * scale
    rows = np.arange(len(ids))
    ob, tb = ours.argmax(-1), theirs.argmax(-1)
    agree = (ob == tb) | (theirs[rows, ob] >= theirs.max(-1) - 0.5) | (ours[rows, tb] >= ours.max(-1) - 0.5)
    assert agree.all(), f"argmax differs at positions {np.flatnonzero(~agree).tolist()}"


@needs_cuda
def test_load_on_the_gpu(tiny_llama):
    llm = edgeinfer.load(str(tiny_llama), n_ctx=64, n_gpu_layers=-1)
    assert llm.offload.n_gpu_layers == 4 and llm.offload.head_on_device
    cpu = edgeinfer.load(str(tiny_llama), n_ctx=64)
    ids = list(range(1, 30))
    a, b = llm.logits(ids), cpu.logits(ids)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9
    assert np.abs(a - b).max() <= 0.06 * float(np.abs(b).max())


# -- the command line and the environment ----------------------------------------------------------------


def _fake_devices(monkeypatch) -> list:
    devices = []

    def fake_device(host, device=0):
        devices.append(RecordingBackend())
        return devices[-1], ""

    monkeypatch.setattr(offload, "open_device", fake_device)
    return devices


def test_env_sets_the_default(tiny_llama, monkeypatch):
    devices = _fake_devices(monkeypatch)
    monkeypatch.setenv("EDGEINFER_N_GPU_LAYERS", "2")
    llm = edgeinfer.load(str(tiny_llama), n_ctx=32, backend="numba", n_threads=1)
    assert llm.offload.n_gpu_layers == 2 and len(devices) == 1
    assert edgeinfer.load(str(tiny_llama), n_ctx=32, backend="numba", n_gpu_layers=0).offload is None
    monkeypatch.setenv("EDGEINFER_N_GPU_LAYERS", "all")
    with pytest.raises(EdgeInferError, match="EDGEINFER_N_GPU_LAYERS"):
        edgeinfer.load(str(tiny_llama), n_ctx=32, backend="numba")


def test_cli_bench_with_ngl(tiny_llama, monkeypatch, capsys):
    from edgeinfer.cli import main

    devices = _fake_devices(monkeypatch)
    monkeypatch.delenv("EDGEINFER_N_GPU_LAYERS", raising=False)
    assert main(["bench", str(tiny_llama), "-p", "8", "-n", "4", "-r", "1", "-t", "1", "--backend", "numba",
                 "--energy", "estimate", "-ngl", "-1", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["n_gpu_layers"] == 4 and result["offload"]["output_on_gpu"]
    assert result["backend"] == "numba+cuda" and "layers 0-3 of 4" in result["offload_description"]
    assert devices[0].layers() == {0, 1, 2, 3}
    # without CUDA: an explicit count is an error that says why, -1 runs on the CPU
    monkeypatch.setattr(offload, "open_device", lambda host, device=0: (None, "no NVIDIA driver here"))
    assert main(["bench", str(tiny_llama), "-p", "8", "-n", "4", "-r", "1", "-ngl", "2", "--json"]) == 1
    assert "CUDA is unavailable here: no NVIDIA driver" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="every layer runs on the CPU"):
        assert main(["bench", str(tiny_llama), "-p", "8", "-n", "4", "-r", "1", "-ngl", "-1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_gpu_layers"] == 0 and "+cuda" not in result["backend"]
    assert result["energy_source"] in ("rapl", "estimate", "nvml+rapl", "nvml+estimate")


def test_cli_ngl_reaches_serve_and_chat(monkeypatch):
    """serve and chat load the model in their own code: -ngl reaches load() through the environment."""
    pytest.importorskip("starlette")  # the server's dependency (absent from the GPU machine's image)
    import edgeinfer.server.multi as server  # `edgeinfer serve` runs serve_models (one model or many)
    from edgeinfer.cli import main

    seen = {}
    # set through monkeypatch so that the value the CLI writes is undone after the test (it leaked into
    # every later load() of the session, the fuzz suite's among them)
    monkeypatch.setenv("EDGEINFER_N_GPU_LAYERS", "0")
    monkeypatch.setattr(server, "serve_models", lambda *a, **kw: seen.setdefault("serve", os.environ.get("EDGEINFER_N_GPU_LAYERS")) and 0)
    main(["serve", "model.gguf", "-ngl", "-1"])
    assert seen["serve"] == "-1"
    assert main(["serve", "model.gguf", "-ngl", "-3"]) == 1


# -- NVML energy (edgeinfer/energy/nvml.py) on a stand-in of libnvidia-ml ----------------------------------


class FakeNvml:
    """The NVML functions NvmlMeter calls, with ctypes.byref outputs, on a scripted GPU."""

    def __init__(self, energy_mj=None, power_mw=250_000):
        self.energy_mj, self.power_mw = energy_mj, power_mw
        self.opened = []

    def nvmlInit_v2(self):
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, ref):
        self.opened.append(index.value)
        ref._obj.value = 1000 + index.value
        return 0

    def nvmlDeviceGetHandleByUUID(self, uuid, ref):
        self.opened.append(uuid.decode())
        ref._obj.value = 7
        return 0

    def nvmlDeviceGetTotalEnergyConsumption(self, handle, ref):
        if self.energy_mj is None:
            return 3  # NVML_ERROR_NOT_SUPPORTED
        ref._obj.value = self.energy_mj() if callable(self.energy_mj) else self.energy_mj
        return 0

    def nvmlDeviceGetPowerUsage(self, handle, ref):
        ref._obj.value = self.power_mw
        return 0


def test_nvml_energy(monkeypatch):
    import time

    from edgeinfer.energy import nvml as nvml_mod

    ticks = iter([1_000, 3_500])
    fake = FakeNvml(energy_mj=lambda: next(ticks))
    monkeypatch.setattr(nvml_mod, "_lib", fake)
    meter = nvml_mod.NvmlMeter("cuda:0")
    fake.energy_mj = lambda: next(ticks)
    ticks = iter([1_000, 3_500])
    with meter.measure() as m:
        pass
    assert m.source == "nvml" and m.joules == pytest.approx(2.5) and "energy counter" in m.note
    # a block shorter than the counter's update: power x time, not zero
    fake.energy_mj = 5_000
    with meter.measure() as m:
        time.sleep(0.05)
    assert m.joules == pytest.approx(250.0 * m.seconds, rel=0.05) and m.joules > 0
    # no counter: power sampled over time
    fake.energy_mj = None
    meter = nvml_mod.NvmlMeter(0, interval_s=0.01)
    assert not meter.has_counter and "power sampled" in meter.note
    with meter.measure() as m:
        time.sleep(0.1)
    assert m.joules == pytest.approx(250.0 * m.seconds, rel=0.3)
    # CUDA's numbering after CUDA_VISIBLE_DEVICES
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    nvml_mod.NvmlMeter("cuda:1")
    nvml_mod.NvmlMeter("cuda:0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    nvml_mod.NvmlMeter("cuda")
    assert fake.opened[-3:] == [1, 3, "GPU-1234"]


def test_gpu_meter_adds_nvml_to_the_cpu(monkeypatch):
    from edgeinfer import energy
    from edgeinfer.energy import nvml as nvml_mod

    monkeypatch.setattr(nvml_mod, "_lib", FakeNvml(energy_mj=1_000))
    meter = energy.open_meter("cuda")
    assert meter.source.startswith("nvml+")
    assert energy.open_meter("cpu").source in ("rapl", "estimate")


def test_meters_count_the_gpu_once_layers_run_there(tiny_llama, monkeypatch):
    """The server's and the chat app's meters ("cpu", opened after the load) add the GPU board."""
    from edgeinfer import energy
    from edgeinfer.energy import nvml as nvml_mod

    monkeypatch.setattr(energy, "_GPUS_IN_USE", [])
    monkeypatch.setattr(nvml_mod, "_lib", FakeNvml(energy_mj=1_000))
    assert not energy.open_meter("cpu").source.startswith("nvml")
    _fake_devices(monkeypatch)
    edgeinfer.load(str(tiny_llama), n_ctx=32, backend="numba", n_threads=1, n_gpu_layers=1)
    assert energy.gpus_in_use() == ("cuda:0",)
    assert energy.open_meter("cpu").source.startswith("nvml+")
    assert energy.open_meter("cpu", "estimate").source == "estimate"
