"""Triton kernels. They run on CUDA tensors, and on CPU tensors only under TRITON_INTERPRET=1
(Triton's interpreter, which is how the test suite exercises them on machines without a GPU)."""
import contextlib
import os

import torch

try:
    import triton  # noqa: F401

    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = f"triton is not installed ({exc})"

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(device_type: str):
    """None if Triton kernels can run on tensors of this device type, else why not."""
    if IMPORT_ERROR:
        return IMPORT_ERROR
    if device_type == "cpu" and not INTERPRET:
        return "Triton runs CPU tensors only under TRITON_INTERPRET=1 (set before importing marsops)"
    if device_type not in ("cpu", "cuda"):
        return f"Triton kernels do not support {device_type} tensors"
    return None


def require(device_type: str, op: str) -> None:
    """Raises a RuntimeError naming `op` if Triton kernels cannot run on this device type."""
    reason = unavailable_reason(device_type)
    if reason:
        raise RuntimeError(f"marsops.{op}: {reason}")


def on_device_of(t: torch.Tensor):
    """A context for launches on t's GPU: Triton launches on the current CUDA device, which need
    not be the one the tensors live on (cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def num_warps(tile_elements: int) -> int:
    """Warps for a program holding [BLOCK_C, BLOCK_P] tiles of this many elements: about 16
    elements of a tile per thread (fewer warps spill registers: .ci/compile_triton.py shows it)."""
    return min(16, max(4, tile_elements // 512))
