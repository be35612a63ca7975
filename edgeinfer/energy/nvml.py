"""NVIDIA GPU energy through NVML, loaded with ctypes from libnvidia-ml.so.1 (no Python dependency).

`nvmlDeviceGetTotalEnergyConsumption` (millijoules since the driver loaded; Volta and newer) is read
before and after (a block too short for the counter to tick gets power x time instead); on GPUs without
that counter, a thread samples `nvmlDeviceGetPowerUsage`
(milliwatts) every `interval_s` and integrates power over time (trapezoids). Used only when a GPU is
asked for or in use; it counts the GPU board alone (the CPU side is measured by another meter)."""

from __future__ import annotations

import ctypes
import os
import threading
import time

from .base import Meter, MeterUnavailable

LIBRARY_NAMES = ("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll")
NVML_SUCCESS = 0

_lib = None
_lib_lock = threading.Lock()


def load_library():
    """The initialised NVML library, or MeterUnavailable with the reason."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        lib, errors = None, []
        for name in LIBRARY_NAMES:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError as e:
                errors.append(str(e))
        if lib is None:
            raise MeterUnavailable("NVML not found (no libnvidia-ml.so.1: no NVIDIA driver here)")
        init = getattr(lib, "nvmlInit_v2", None) or getattr(lib, "nvmlInit", None)
        if init is None or init() != NVML_SUCCESS:
            raise MeterUnavailable("NVML present but nvmlInit failed (no usable NVIDIA GPU)")
        _lib = lib
        return lib


def _device_index(device: str | int | None) -> int | str:
    """NVML's index (or a GPU's UUID) for a device: an int is NVML's own index; "cuda:N" / "gpu:N" is the
    N-th GPU CUDA sees, which CUDA_VISIBLE_DEVICES may renumber ("2,3": cuda:0 is NVML's 2; UUIDs name
    the GPU directly)."""
    if device is None or isinstance(device, int):
        return int(device or 0)
    _, _, idx = str(device).partition(":")
    n = int(idx) if idx.strip().isdigit() else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if n < len(visible):
        v = visible[n]
        return int(v) if v.isdigit() else v
    return n


class NvmlMeter(Meter):
    source = "nvml"

    def __init__(self, device: str | int | None = 0, interval_s: float = 0.05):
        self.lib = lib = load_library()
        self.index = _device_index(device)
        self.interval_s = interval_s
        handle = ctypes.c_void_p()
        if isinstance(self.index, str):  # a UUID from CUDA_VISIBLE_DEVICES
            rc = lib.nvmlDeviceGetHandleByUUID(self.index.encode(), ctypes.byref(handle))
        else:
            get = getattr(lib, "nvmlDeviceGetHandleByIndex_v2", None) or lib.nvmlDeviceGetHandleByIndex
            rc = get(ctypes.c_uint(self.index), ctypes.byref(handle))
        if rc != NVML_SUCCESS:
            raise MeterUnavailable(f"NVML has no GPU {self.index}")
        self.handle = handle
        self.has_counter = self._energy_mj() is not None
        if not self.has_counter and self._power_mw() is None:
            raise MeterUnavailable(f"GPU {self.index} reports neither energy nor power through NVML")

    @property
    def note(self) -> str:
        how = "total energy counter" if self.has_counter else f"power sampled every {self.interval_s * 1000:g} ms x time"
        return f"NVIDIA GPU {self.index} board energy from NVML ({how})"

    def _energy_mj(self) -> int | None:
        value = ctypes.c_ulonglong()
        fn = getattr(self.lib, "nvmlDeviceGetTotalEnergyConsumption", None)
        if fn is None or fn(self.handle, ctypes.byref(value)) != NVML_SUCCESS:
            return None
        return int(value.value)

    def _power_mw(self) -> int | None:
        value = ctypes.c_uint()
        if self.lib.nvmlDeviceGetPowerUsage(self.handle, ctypes.byref(value)) != NVML_SUCCESS:
            return None
        return int(value.value)

    def _start(self):
        if self.has_counter:
            return {"start_mj": self._energy_mj(), "t0": time.perf_counter(), "mw0": self._power_mw()}
        state = {"joules": 0.0, "stop": threading.Event()}
        last = [time.perf_counter(), self._power_mw() or 0]

        def sample() -> None:
            while True:
                done = state["stop"].wait(self.interval_s)
                now, mw = time.perf_counter(), self._power_mw()
                mw = last[1] if mw is None else mw
                state["joules"] += (now - last[0]) * (mw + last[1]) / 2 / 1000.0
                last[:] = [now, mw]
                if done:
                    return

        state["thread"] = threading.Thread(target=sample, name="edgeinfer-nvml", daemon=True)
        state["thread"].start()
        return state

    def _stop(self, state) -> float:
        if "start_mj" in state:
            end = self._energy_mj()
            delta = max(0, (end or state["start_mj"]) - state["start_mj"]) / 1000.0
            if delta > 0:
                return delta
            # the counter had not ticked yet (a block shorter than its update interval): the mean of the
            # power read at both ends x the time, rather than a zero
            mw1 = self._power_mw()
            mws = [p for p in (state.get("mw0"), mw1) if p is not None]
            seconds = time.perf_counter() - state["t0"]
            return (sum(mws) / len(mws)) * seconds / 1000.0 if mws else 0.0
        state["stop"].set()
        state["thread"].join()
        return state["joules"]
