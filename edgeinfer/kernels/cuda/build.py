"""Building the CUDA library on first use: never at install, never required.

    path = library_path()       # built once into the cache, then reused

The sources are native/cuda/*.cu (+ headers) of the checkout edgeinfer runs from, or the folder
EDGEINFER_CUDA_SOURCES names. nvcc is looked for, in order: EDGEINFER_NVCC, PATH, CUDA_HOME / CUDA_PATH,
/usr/local/cuda/bin, and an installed `nvidia-cuda-nvcc` wheel (`pip install nvidia-cuda-nvcc` gives
CUDA 13's compiler, headers and static runtime without a system toolkit). The library is built for the
GPU in hand (`-arch=sm_90` on Hopper; compute capability from the driver, else nvidia-smi), or, when no
GPU can be asked, for a list of targets with PTX for the newest, into

    $EDGEINFER_HOME/cuda/<key>/libedgeinfer_cuda.so      (default ~/.cache/edgeinfer/cuda/...)

where key hashes the sources, the nvcc version, the targets and the flags: changed sources or another
compiler build a new one, everything else reuses it. Without nvcc, a library built earlier from the
same sources for the same GPU is still used. Builds are serialized by a file lock and land atomically.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import EdgeInferError

LIBRARY_NAME = "libedgeinfer_cuda.so" if sys.platform != "win32" else "edgeinfer_cuda.dll"
BUILD_FLAGS = ("-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden")
# when the GPU cannot be asked: Turing .. Hopper as machine code, PTX of the newest for later GPUs
FALLBACK_ARCHS = ("75", "80", "86", "89", "90")
SOURCE_SUFFIXES = (".cu", ".cuh", ".h")
NVCC_TIMEOUT_S = 1200
DEFAULT_TOOLKIT = Path("/usr/local/cuda")


class CudaBuildError(EdgeInferError):
    """nvcc was found but the library could not be built (the message carries nvcc's output)."""


def cache_root() -> Path:
    """`$EDGEINFER_HOME/cuda`, or the user's cache directory (e.g. ~/.cache/edgeinfer/cuda)."""
    home = os.environ.get("EDGEINFER_HOME")
    if home:
        base = Path(home).expanduser()
    else:
        import platformdirs

        base = Path(platformdirs.user_cache_dir("edgeinfer", appauthor=False))
    return base / "cuda"


def source_dir() -> Path | None:
    """The folder holding the .cu sources, or None when this installation has none."""
    env = os.environ.get("EDGEINFER_CUDA_SOURCES")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "native" / "cuda")  # a checkout
    for d in candidates:
        if d.is_dir() and any(d.glob("*.cu")):
            return d
    return None


def source_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in SOURCE_SUFFIXES and p.is_file())


def sources_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for p in source_files(directory):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


# -- nvcc ------------------------------------------------------------------------------------------------


def _wheel_nvccs() -> list[Path]:
    """nvcc inside installed NVIDIA wheels: nvidia/cu13/bin/nvcc (CUDA 13's nvidia-cuda-nvcc), or
    nvidia/cuda_nvcc/bin/nvcc (older layouts), on sys.path."""
    found = []
    for entry in sys.path:
        if not entry or not os.path.isdir(os.path.join(entry, "nvidia")):
            continue
        for pattern in ("nvidia/cu*/bin/nvcc", "nvidia/cuda_nvcc/bin/nvcc"):
            found += [Path(p) for p in sorted(glob.glob(os.path.join(entry, pattern)), reverse=True)]
    return found


def nvcc_candidates() -> list[tuple[str, Path]]:
    """(where it was looked for, path) in search order; the paths need not exist."""
    out: list[tuple[str, Path]] = []
    if os.environ.get("EDGEINFER_NVCC"):
        out.append(("EDGEINFER_NVCC", Path(os.environ["EDGEINFER_NVCC"])))
    on_path = shutil.which("nvcc")
    if on_path:
        out.append(("PATH", Path(on_path)))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            out.append((var, Path(os.environ[var]) / "bin" / "nvcc"))
    out.append((str(DEFAULT_TOOLKIT), DEFAULT_TOOLKIT / "bin" / "nvcc"))
    out += [("the nvidia-cuda-nvcc wheel", p) for p in _wheel_nvccs()]
    return out


def find_nvcc() -> Path | None:
    for _, p in nvcc_candidates():
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


NVCC_SEARCHED = (
    "EDGEINFER_NVCC, PATH, CUDA_HOME/CUDA_PATH, /usr/local/cuda/bin and an installed nvidia-cuda-nvcc wheel"
)
NVCC_HINT = (
    "install the CUDA toolkit, or `pip install nvidia-cuda-nvcc` (CUDA 13's compiler as a wheel), or point "
    "EDGEINFER_NVCC at an nvcc"
)

_VERSION_CACHE: dict[tuple[str, float], str] = {}


def nvcc_version(nvcc: Path) -> str:
    """nvcc's release line, e.g. "Cuda compilation tools, release 13.0, V13.0.88"."""
    key = (str(nvcc), nvcc.stat().st_mtime)
    if key not in _VERSION_CACHE:
        try:
            out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            raise CudaBuildError(f"{nvcc} --version failed ({e}); is it a working nvcc?") from None
        lines = [x for x in out.stdout.splitlines() if "release" in x]
        if out.returncode != 0 or not lines:
            raise CudaBuildError(f"{nvcc} --version failed: {(out.stderr or out.stdout).strip()[-500:]}")
        _VERSION_CACHE[key] = lines[-1].strip()
    return _VERSION_CACHE[key]


def nvcc_release(version_line: str) -> tuple[int, int] | None:
    m = re.search(r"release (\d+)\.(\d+)", version_line)
    return (int(m.group(1)), int(m.group(2))) if m else None


def nvcc_archs(nvcc: Path) -> list[str] | None:
    """The compute_XX targets nvcc knows ("75", "80", ...), or None when it cannot say."""
    try:
        out = subprocess.run([str(nvcc), "--list-gpu-arch"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    archs = re.findall(r"compute_(\d+)\b", out.stdout)
    return archs if out.returncode == 0 and archs else None


def arch_flags(cc: tuple[int, int] | None, supported: list[str] | None = None) -> list[str]:
    """-arch for the GPU in hand (sm_90 for compute capability 9.0), or -gencode for each fallback
    target nvcc supports, with PTX of the newest so later GPUs can compile it at load."""
    if cc is not None:
        return [f"-arch=sm_{cc[0]}{cc[1]}"]
    archs = [a for a in FALLBACK_ARCHS if supported is None or a in supported] or list(FALLBACK_ARCHS[-1:])
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


def toolkit_flags(nvcc: Path) -> list[str]:
    """Include and library folders a wheel-installed nvcc does not find by itself: the wheels put
    libcudart_static.a in <root>/lib (CUDA 13's nvidia-cuda-runtime) or in a sibling
    nvidia/cuda_runtime package (older layouts). A full toolkit (<root>/targets) needs none."""
    root = nvcc.resolve().parent.parent
    if (root / "targets").is_dir():
        return []
    flags: list[str] = []
    for base in (root, root.parent / "cuda_runtime"):
        for d in ("lib", "lib64"):
            if (base / d / "libcudart_static.a").is_file():
                flags += ["-L", str(base / d)]
                break
        if base != root and (base / "include" / "cuda_runtime.h").is_file():
            flags += ["-I", str(base / "include")]
    return flags


def extra_flags() -> list[str]:
    return shlex.split(os.environ.get("EDGEINFER_NVCC_FLAGS", ""))


# -- the build -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildPlan:
    nvcc: Path
    nvcc_version: str
    sources: Path
    sources_sha256: str
    arch: tuple[str, ...]
    command: tuple[str, ...]  # with OUTPUT where the library goes
    key: str

    @property
    def directory(self) -> Path:
        return cache_root() / self.key

    @property
    def library(self) -> Path:
        return self.directory / LIBRARY_NAME


def plan_build(nvcc: Path | None = None, cc: tuple[int, int] | None | str = "auto", sources: Path | None = None) -> BuildPlan:
    """What would be built, and where. cc: the compute capability to build for ("auto": ask the driver)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise CudaBuildError(f"No nvcc (the CUDA compiler) was found; searched {NVCC_SEARCHED}. To use the GPU, {NVCC_HINT}.")
    sources = sources or source_dir()
    if sources is None:
        raise CudaBuildError(
            "The CUDA sources (native/cuda/*.cu) are not part of this installation; run edgeinfer from a "
            "checkout (pip install -e .) or set EDGEINFER_CUDA_SOURCES to the folder that holds them."
        )
    if cc == "auto":
        from .driver import compute_capability

        cc = compute_capability()
    version = nvcc_version(nvcc)
    arch = arch_flags(cc, None if cc is not None else nvcc_archs(nvcc))
    if cc is None and len(arch) > 2:
        arch = ["--threads", "0", *arch]  # nvcc compiles the targets in parallel
    cu = [str(p) for p in source_files(sources) if p.suffix == ".cu"]
    command = (str(nvcc), *BUILD_FLAGS, *arch, "-I", str(sources), *toolkit_flags(nvcc), *extra_flags(), "-o", "OUTPUT", *cu)
    digest = sources_digest(sources)
    h = hashlib.sha256()
    h.update(json.dumps([digest, version, arch, list(BUILD_FLAGS), extra_flags(), sys.platform]).encode())
    return BuildPlan(nvcc, version, sources, digest, tuple(arch), command, h.hexdigest()[:20])


def cached_library(sources: Path | None = None, cc: tuple[int, int] | None | str = "auto") -> Path | None:
    """A library built earlier from these sources for this GPU (any nvcc), or None: what runs where
    the compiler is gone."""
    sources = sources or source_dir()
    root = cache_root()
    if sources is None or not root.is_dir():
        return None
    if cc == "auto":
        from .driver import compute_capability

        cc = compute_capability()
    digest = sources_digest(sources)
    best = None
    for manifest in root.glob("*/manifest.json"):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        lib = manifest.parent / LIBRARY_NAME
        if m.get("sources_sha256") != digest or not lib.is_file():
            continue
        targets = m.get("targets", [])
        if cc is not None and f"{cc[0]}{cc[1]}" not in targets and not m.get("ptx"):
            continue
        if best is None or lib.stat().st_mtime > best.stat().st_mtime:
            best = lib
    return best


def _targets(arch: tuple[str, ...]) -> tuple[list[str], bool]:
    """The sm_XX machine-code targets ("90", ...) of the -arch/-gencode flags, and whether PTX is in."""
    targets, ptx = [], False
    for f in arch:
        targets += re.findall(r"sm_(\d+a?)", f)
        ptx |= bool(re.search(r"code=compute_\d+", f)) or f.startswith("-arch=compute_")
    return targets, ptx


def library_path(force: bool = False, log=None, cc: tuple[int, int] | None | str = "auto") -> Path:
    """The built library (building it first when needed). log(str) hears what is going on."""
    log = log or (lambda msg: None)
    nvcc = find_nvcc()
    if nvcc is None and not force:
        lib = cached_library(cc=cc)
        if lib is not None:
            return lib
    plan = plan_build(nvcc, cc=cc)
    if plan.library.is_file() and not force:
        return plan.library
    plan.directory.mkdir(parents=True, exist_ok=True)
    with _FileLock(plan.directory / ".lock"):
        if plan.library.is_file() and not force:  # another process built it while we waited
            return plan.library
        return _build(plan, log)


def _build(plan: BuildPlan, log) -> Path:
    tmp = plan.directory / f".{LIBRARY_NAME}.{os.getpid()}.tmp"
    command = [str(tmp) if c == "OUTPUT" else c for c in plan.command]
    log(f"building the CUDA kernels with {plan.nvcc} ({plan.nvcc_version}; {' '.join(plan.arch)}); "
        "the first use takes a minute")  # fmt: skip
    t0 = time.perf_counter()
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=NVCC_TIMEOUT_S, cwd=plan.directory)
    except subprocess.TimeoutExpired:
        raise CudaBuildError(f"nvcc took more than {NVCC_TIMEOUT_S} s building the CUDA kernels; gave up.") from None
    except OSError as e:
        raise CudaBuildError(f"nvcc could not be run ({e}).") from None
    seconds = time.perf_counter() - t0
    (plan.directory / "build.log").write_text(
        f"$ {shlex.join(command)}\n# exit {out.returncode} after {seconds:.1f} s\n{out.stdout}{out.stderr}"
    )
    if out.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = (out.stderr or out.stdout).strip()[-3000:]
        raise CudaBuildError(
            f"Building the CUDA kernels failed (nvcc exit {out.returncode}; full log in "
            f"{plan.directory / 'build.log'}):\n{tail}"
        )
    os.replace(tmp, plan.library)
    targets, ptx = _targets(plan.arch)
    manifest = {
        "nvcc": str(plan.nvcc),
        "nvcc_version": plan.nvcc_version,
        "sources": str(plan.sources),
        "sources_sha256": plan.sources_sha256,
        "arch": list(plan.arch),
        "targets": targets,
        "ptx": ptx,
        "command": command,
        "seconds": round(seconds, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = plan.directory / f".manifest.json.{os.getpid()}.tmp"  # written whole, then renamed: never half-written
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, plan.directory / "manifest.json")
    log(f"built {plan.library} in {seconds:.0f} s")
    return plan.library


class _FileLock:
    """An exclusive lock on a file (POSIX flock; elsewhere none): one build at a time per key."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "a+")
        try:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        try:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_UN)
        except ImportError:
            pass
        self.fh.close()
