"""Loads the compiled kernels and remembers why one did not load.

marsops._C holds the CPU kernels (and every op schema); marsops._C_cuda the CUDA kernels. Both
are built against the LibTorch stable ABI for torch >= 2.10, so they load on any such torch; the
CUDA module needs a CUDA build of torch. A module that was built but fails to load is reported
once, as a warning at import, and its reason stays in `marsops.backends()`.
"""
import functools
import importlib
import warnings

import torch

try:
    from . import _build_info as BUILD
except ImportError:  # nothing was built (a source checkout)
    BUILD = None


def _built_against() -> str:
    if BUILD is None:
        return ""
    cuda = f", CUDA {BUILD.CUDA}" if BUILD.CUDA else ""
    return f"built against torch {BUILD.TORCH}{cuda} for torch >= {BUILD.TARGET_TORCH}; "


def _load(name: str):
    """(module, None) or (None, why not)."""
    try:
        return importlib.import_module(f"{__package__}.{name}"), None
    except ImportError as exc:
        return None, exc


_C, _c_error = _load("_C")
_C_cuda, _cuda_error = (None, None)
if _C is not None:
    _C_cuda, _cuda_error = _load("_C_cuda")

RUNNING = f"running torch {torch.__version__}" + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else
                                                   " (a CPU build)")
if _C is None:
    if BUILD is None:
        LOAD_ERROR = ("marsops._C is not built; build it with `pip install -e .` (or `pip install "
                      "--no-build-isolation -e .` against the installed torch)")
    else:
        LOAD_ERROR = f"marsops._C failed to load ({_c_error}); {_built_against()}{RUNNING}"
        warnings.warn(f"marsops: {LOAD_ERROR}. Falling back to the pure-PyTorch reference.", RuntimeWarning,
                      stacklevel=2)
else:
    LOAD_ERROR = None

if _C is None:
    CUDA_LOAD_ERROR = LOAD_ERROR
elif BUILD is not None and not BUILD.CUDA_KERNELS:
    CUDA_LOAD_ERROR = "marsops was built without CUDA kernels (no CUDA toolkit or a CPU torch at build time; see setup.py)"
elif _C_cuda is None:
    if torch.version.cuda is None:
        CUDA_LOAD_ERROR = (f"marsops._C_cuda needs a CUDA build of torch; {RUNNING}. The CPU kernels are "
                           "unaffected")
    else:
        CUDA_LOAD_ERROR = f"marsops._C_cuda failed to load ({_cuda_error}); {_built_against()}{RUNNING}"
        warnings.warn(f"marsops: {CUDA_LOAD_ERROR}. CUDA tensors will use Triton or the reference.", RuntimeWarning,
                      stacklevel=2)
else:
    CUDA_LOAD_ERROR = None


def load_error(dispatch_key: str):
    """Why the kernels for "CPU" or "CUDA" did not load, or None."""
    return LOAD_ERROR if dispatch_key == "CPU" else CUDA_LOAD_ERROR


@functools.lru_cache(maxsize=None)  # registrations are fixed once the modules are imported; asked per op call
def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether torch.ops.marsops.<op_name> has a compiled kernel for "CPU" or "CUDA"."""
    return load_error(dispatch_key) is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"marsops::{op_name}", dispatch_key)
