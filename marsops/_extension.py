"""Loads the compiled ops (marsops._C) if they were built, and remembers why not otherwise."""
import functools

import torch

try:
    from . import _C  # noqa: F401  (importing registers the torch.ops.marsops.* kernels)

    LOAD_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = f"marsops._C could not be imported ({exc}); build it with `pip install --no-build-isolation -e .`"


@functools.lru_cache(maxsize=None)  # registrations are fixed once _C is imported; asked on every op call
def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether torch.ops.marsops.<op_name> has a compiled kernel for "CPU" or "CUDA"."""
    return _C is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"marsops::{op_name}", dispatch_key)
