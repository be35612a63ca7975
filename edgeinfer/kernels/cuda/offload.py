"""Which layers run on the GPU: `n_gpu_layers` turned into a plan, and the plan into the per-layer
backend hook of edgeinfer.arch.build_model.

    plan = plan_offload(gguf, host_backend, n_gpu_layers=-1)
    model = build_model(gguf, host_backend, layer_backend=plan.layer_backend)

Layers 0..n-1 run on the device backend, the rest on the host backend; the output head (output_norm and
output, "layer" n_layer) runs on the device only when every layer does (and, for -1, when it fits too).
The token embedding stays on the host. Activations cross between the two as numpy arrays, so the
hand-off between the last GPU layer and the first CPU layer needs nothing of its own.

n_gpu_layers: 0 none; N > 0 the first N layers (more than the model has: all of them); -1 as many as fit
in the GPU's free memory, keeping RESERVE_BYTES (or EDGEINFER_CUDA_RESERVE_MB) free for work buffers;
None (load's default) EDGEINFER_N_GPU_LAYERS when set, else 0.
Where CUDA is unavailable, -1 runs everything on the CPU with a warning (none fit), while an explicit
N > 0 is an EdgeInferError that says why.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field

from ...errors import EdgeInferError

RESERVE_BYTES = 768 << 20
_LAYER = re.compile(r"^blk\.(\d+)\.")


def reserve_bytes(total: int | None = None) -> int:
    env = os.environ.get("EDGEINFER_CUDA_RESERVE_MB")
    if env:
        try:
            return max(0, int(float(env) * 2**20))
        except ValueError:
            pass
    return max(RESERVE_BYTES, int(0.05 * total)) if total else RESERVE_BYTES


def layer_sizes(gguf) -> tuple[list[int], int]:
    """Bytes of each layer's tensors (blk.N.*) and of the output head (output.weight, or token_embd when
    the head is tied to it, plus output_norm), from the file's tensor table."""
    n_layer = int(gguf.arch_get("block_count"))
    sizes = [0] * n_layer
    head = 0
    names = set(gguf.tensors)
    for name, t in gguf.tensors.items():
        m = _LAYER.match(name)
        if m and int(m.group(1)) < n_layer:
            sizes[int(m.group(1))] += int(t.n_bytes)
        elif name.startswith("output"):
            head += int(t.n_bytes)
    if "output.weight" not in names and "token_embd.weight" in names:
        head += int(gguf.tensors["token_embd.weight"].n_bytes)  # tied: the GPU gets its own copy
    return sizes, head


ENV_N_GPU_LAYERS = "EDGEINFER_N_GPU_LAYERS"


def default_n_gpu_layers(n_gpu_layers=None) -> int:
    """n_gpu_layers, or when None, $EDGEINFER_N_GPU_LAYERS (a whole number), else 0; checked."""
    if n_gpu_layers is None:
        env = os.environ.get(ENV_N_GPU_LAYERS, "").strip()
        if not env:
            return 0
        try:
            n_gpu_layers = int(env)
        except ValueError:
            raise EdgeInferError(f"{ENV_N_GPU_LAYERS} must be a whole number (0, N or -1), not {env!r}.") from None
    return check_n_gpu_layers(n_gpu_layers)


def check_n_gpu_layers(n_gpu_layers) -> int:
    if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < -1:
        raise EdgeInferError(
            f"n_gpu_layers must be a whole number: 0 (CPU only), N > 0 (the first N layers on the GPU) or -1 "
            f"(as many as fit), not {n_gpu_layers!r}."
        )
    return n_gpu_layers


def plan_layers(layer_bytes: list[int], head_bytes: int, budget: int | None, requested: int) -> tuple[int, bool]:
    """(layers on the device, whether the output head is): requested N >= 0 takes min(N, n_layer) whatever
    the budget (the caller checks it); -1 takes layers in order while their bytes fit in `budget`, and
    the head too when every layer fits and the head still does."""
    n_layer = len(layer_bytes)
    if requested >= 0:
        n = min(requested, n_layer)
        return n, n == n_layer and n_layer > 0
    if budget is None:
        return n_layer, True
    used, n = 0, 0
    for b in layer_bytes:
        if used + b > budget:
            break
        used += b
        n += 1
    return n, n == n_layer and used + head_bytes <= budget


@dataclass
class OffloadPlan:
    n_layer: int
    n_gpu_layers: int  # layers on the device
    head_on_device: bool
    host: object
    device: object | None
    requested: int
    layer_bytes: list[int] = field(default_factory=list)
    head_bytes: int = 0
    free_bytes: int | None = None
    reason: str = ""  # why nothing is on the device, when nothing is

    def layer_backend(self, il: int):
        """The backend of layer il (0..n_layer-1), or of the output head for il == n_layer."""
        if self.device is None:
            return self.host
        if il >= self.n_layer:
            return self.device if self.head_on_device else self.host
        return self.device if il < self.n_gpu_layers else self.host

    @property
    def device_bytes(self) -> int:
        return sum(self.layer_bytes[: self.n_gpu_layers]) + (self.head_bytes if self.head_on_device else 0)

    def summary(self) -> dict:
        return {
            "n_gpu_layers": self.n_gpu_layers,
            "n_layer": self.n_layer,
            "output_on_gpu": self.head_on_device,
            "requested": self.requested,
            "gpu": getattr(self.device, "device_name", None) if self.device is not None else None,
            "gpu_weight_bytes": self.device_bytes,
        }

    def describe(self) -> str:
        if self.device is None or self.n_gpu_layers == 0 and not self.head_on_device:
            return f"all {self.n_layer} layers on the CPU" + (f" ({self.reason})" if self.reason else "")
        name = getattr(self.device, "device_name", "the GPU")
        head = ", and the output head" if self.head_on_device else ""
        return (f"layers 0-{self.n_gpu_layers - 1} of {self.n_layer}{head} on {name} "
                f"({self.device_bytes / 2**20:.0f} MiB of weights)")  # fmt: skip


def open_device(host, device: int = 0):
    """The CUDA backend for `host`, or (None, the reason CUDA is unavailable). Tests replace it."""
    from . import available, unavailable_reason

    if not available():
        return None, unavailable_reason()
    from .backend import CudaBackend

    try:
        return CudaBackend(device=device, host=host), ""
    except EdgeInferError as e:
        return None, str(e)


def plan_offload(gguf, host, n_gpu_layers: int, device=None, used_bytes: int = 0) -> OffloadPlan:
    """The plan for a model file. device: a device backend to use (default: open_device(host)), shared
    by a model and its draft; used_bytes: device memory already promised (the main model's, for a draft)."""
    requested = check_n_gpu_layers(n_gpu_layers)
    sizes, head = layer_sizes(gguf)
    plan = OffloadPlan(len(sizes), 0, False, host, None, requested, sizes, head)
    if requested == 0:
        return plan
    reason = ""
    if device is None:
        device, reason = open_device(host)
    if device is None:
        if requested == -1:
            warnings.warn(
                f"n_gpu_layers=-1: CUDA is unavailable here ({reason}); every layer runs on the CPU.",
                RuntimeWarning,
                stacklevel=3,
            )
            plan.reason = f"CUDA unavailable: {reason}"
            return plan
        raise EdgeInferError(
            f"n_gpu_layers={requested} asks for {requested} layers on the GPU, but CUDA is unavailable here: "
            f"{reason}. Use n_gpu_layers=0 (-ngl 0) to run on the CPU, or -1 to use a GPU only where one works."
        )
    free, total = device.mem_info()
    budget = max(0, free - reserve_bytes(total) - used_bytes)
    n, head_on = plan_layers(sizes, head, budget, requested)
    plan.device, plan.n_gpu_layers, plan.head_on_device, plan.free_bytes = device, n, head_on, free
    if requested > 0 and plan.device_bytes > budget:
        gib = 2**30
        raise EdgeInferError(
            f"{n} layers{' and the output head' if head_on else ''} need {plan.device_bytes / gib:.2f} GiB of GPU "
            f"memory, but {getattr(device, 'device_name', 'the GPU')} has {free / gib:.2f} GiB free "
            f"({reserve_bytes(total) / gib:.2f} GiB of it kept for work buffers). Use n_gpu_layers=-1 (-ngl -1) "
            "to put as many layers as fit on the GPU, or a smaller number."
        )
    if requested == -1 and n == 0:
        plan.reason = f"none of the layers fits in the GPU's {budget / 2**20:.0f} MiB left free"
    return plan
