"""The NVIDIA driver, asked through ctypes (libcuda.so.1, the CUDA driver API): is there one, which
GPUs does it see, and what compute capability do they have. Nothing here needs the CUDA toolkit, and
nothing is imported or built: a machine without a GPU answers in a few milliseconds."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

LIBRARY_NAMES = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")

# CUdevice_attribute
ATTR_COMPUTE_CAPABILITY_MAJOR = 75
ATTR_COMPUTE_CAPABILITY_MINOR = 76
ATTR_MULTIPROCESSOR_COUNT = 16


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    compute_capability: tuple[int, int]
    n_sm: int = 0


@dataclass(frozen=True)
class DriverInfo:
    """What the driver says. ok: a driver and at least one GPU; reason: why not, one sentence."""

    ok: bool
    reason: str = ""
    driver_version: int = 0  # e.g. 13000 for CUDA 13.0
    gpus: tuple[GPU, ...] = field(default_factory=tuple)

    @property
    def driver_cuda(self) -> str:
        v = self.driver_version
        return f"{v // 1000}.{v % 1000 // 10}" if v else "?"


def _error_name(lib, code: int) -> str:
    s = ctypes.c_char_p()
    try:
        if lib.cuGetErrorName(code, ctypes.byref(s)) == 0 and s.value:
            return s.value.decode()
    except (AttributeError, OSError):
        pass
    return f"error {code}"


def load_libcuda():
    """(the driver library, None) or (None, why it could not be loaded)."""
    errors = []
    for name in LIBRARY_NAMES:
        try:
            return ctypes.CDLL(name), None
        except OSError as e:
            errors.append(str(e))
    return None, (
        "no NVIDIA driver here (libcuda.so.1, the CUDA driver library, cannot be loaded: "
        f"{errors[0] if errors else 'not found'})"
    )


_PROBE: DriverInfo | None = None


def probe(refresh: bool = False) -> DriverInfo:
    """The driver and its GPUs (remembered for the process; CUDA_VISIBLE_DEVICES applies)."""
    global _PROBE
    if _PROBE is not None and not refresh:
        return _PROBE
    _PROBE = _probe()
    return _PROBE


def _probe() -> DriverInfo:
    lib, why = load_libcuda()
    if lib is None:
        return DriverInfo(False, why)
    try:
        rc = lib.cuInit(0)
    except AttributeError:
        return DriverInfo(False, "the CUDA driver library has no cuInit (not an NVIDIA driver)")
    version = ctypes.c_int(0)
    try:
        lib.cuDriverGetVersion(ctypes.byref(version))
    except AttributeError:
        pass
    if rc != 0:
        hint = " (CUDA_VISIBLE_DEVICES hides every GPU)" if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1") else ""
        return DriverInfo(False, f"the NVIDIA driver found no usable GPU (cuInit: {_error_name(lib, rc)}){hint}", version.value)
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0 or count.value <= 0:
        return DriverInfo(False, "the NVIDIA driver sees no GPU", version.value)
    gpus = []
    for i in range(count.value):
        dev = ctypes.c_int(0)
        if lib.cuDeviceGet(ctypes.byref(dev), i) != 0:
            continue
        major, minor, n_sm = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(major), ATTR_COMPUTE_CAPABILITY_MAJOR, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), ATTR_COMPUTE_CAPABILITY_MINOR, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(n_sm), ATTR_MULTIPROCESSOR_COUNT, dev)
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, 256, dev)
        gpus.append(GPU(i, name.value.decode(errors="replace"), (major.value, minor.value), n_sm.value))
    if not gpus:
        return DriverInfo(False, "the NVIDIA driver lists GPUs but none could be opened", version.value)
    return DriverInfo(True, "", version.value, tuple(gpus))


def compute_capability(device: int = 0) -> tuple[int, int] | None:
    """The GPU's compute capability, e.g. (9, 0) on Hopper: from the driver, else `nvidia-smi
    --query-gpu=compute_cap`, else None."""
    info = probe()
    for g in info.gpus:
        if g.index == device and g.compute_capability[0] > 0:
            return g.compute_capability
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [x.strip() for x in out.stdout.splitlines() if x.strip()]
    if out.returncode != 0 or len(lines) <= device:
        return None
    try:
        major, minor = lines[device].split(".")
        return int(major), int(minor)
    except ValueError:
        return None
