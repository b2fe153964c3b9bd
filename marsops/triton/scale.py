"""In-place scaling of a saved gradient by a device scalar, skipped on the device when the
scalar is 1 (loss.backward() on a GPU passes a device tensor of 1: reading it on the host would
synchronise, multiplying anyway would read and write the whole gradient once more)."""
import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _scale_kernel(x_ptr, scale_ptr, n, BLOCK: tl.constexpr):
    s = tl.load(scale_ptr).to(tl.float32)
    if s != 1.0:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        tl.store(x_ptr + offs, (x * s).to(x_ptr.dtype.element_ty), mask=mask)


def scale_(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x *= scale`` (a one-element tensor on x's device), in place; x contiguous."""
    n = x.numel()
    if n:
        _scale_kernel[(triton.cdiv(n, BLOCK),)](x, scale, n, BLOCK=BLOCK)
    return x
