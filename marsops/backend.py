"""Which implementation of an op runs for a given tensor.

backend="auto" (the default) picks, for CUDA tensors, the compiled CUDA kernel where it was
built, else Triton; for CPU tensors the compiled C++ kernel if built, else the pure-PyTorch
reference. The `backend=` argument, or the MARSOPS_BACKEND environment variable when the
argument is "auto", forces one of "reference", "cpu", "cuda", "triton".
"""
import os
from typing import Dict

import torch

from . import _extension
from . import triton as _triton

BACKENDS = ("reference", "cpu", "cuda", "triton")

# For CUDA tensors under "auto": the order to try. CUDA C++ first: it has no JIT warm-up; swap
# per op here if benchmarks/results on a GPU show Triton faster.
CUDA_PREFERENCE = ("cuda", "triton", "reference")


def unavailable_reason(backend: str, op_name: str, device_type: str):
    """None if `backend` can run `op_name` on tensors of `device_type`, else the reason."""
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda"):
        if backend != device_type:
            return f"the {backend} backend needs {backend.upper()} tensors, got {device_type} tensors"
        error = _extension.load_error(backend.upper())
        if error:
            return error
        if not _extension.has_kernel(op_name, backend.upper()):
            return f"the compiled {backend} kernels do not implement {op_name}"
        return None
    if backend == "triton":
        return _triton.unavailable_reason(device_type)
    return f"unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'"


def resolve(op_name: str, tensor: torch.Tensor, backend: str = "auto") -> str:
    """The backend that will run `op_name` for `tensor`; raises if a forced one cannot."""
    return _resolve(op_name, tensor.device.type, backend)


@torch.compiler.assume_constant_result  # a trace-time constant for torch.compile: no graph break
def _resolve(op_name: str, device_type: str, backend: str) -> str:
    if backend == "auto":
        backend = os.environ.get("MARSOPS_BACKEND", "auto")
    if backend not in BACKENDS and backend != "auto":
        raise ValueError(f"marsops: unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'")
    if backend != "auto":
        reason = unavailable_reason(backend, op_name, device_type)
        if reason:
            raise RuntimeError(f"marsops: backend {backend!r} cannot run {op_name}: {reason}")
        return backend
    order = CUDA_PREFERENCE if device_type == "cuda" else ("cpu", "reference")
    return next(b for b in order if unavailable_reason(b, op_name, device_type) is None)


def backends(op_name: str = "focal_loss_forward") -> Dict[str, str]:
    """{backend: "available" or why not} for CPU and (if present) CUDA tensors."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {}
    for b in BACKENDS:
        reasons = {d: unavailable_reason(b, op_name, d) for d in devices}
        ok = [d for d, r in reasons.items() if r is None]
        report[b] = f"available ({', '.join(ok)} tensors)" if ok else "; ".join(sorted(set(reasons.values())))
    if not torch.cuda.is_available():
        if _extension.has_kernel(op_name, "CUDA"):
            report["cuda"] = "built and loaded, but no GPU is visible"
        else:
            report["cuda"] = _extension.load_error("CUDA") or f"the compiled cuda kernels do not implement {op_name}"
    return report


def empty_cache() -> None:
    """Release the CPU kernels' pool of large output buffers (kept so the next training step
    reuses memory already mapped instead of faulting in fresh pages)."""
    if _extension._C is not None:
        torch.ops.marsops.empty_cache()
