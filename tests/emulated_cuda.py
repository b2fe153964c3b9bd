"""The CUDA kernels under the test suite, without a GPU.

A test session started with ``MARSOPS_EMULATED_CUDA=1`` (``.ci/emulate_cuda`` does) builds the
test-only library ``marsops_emulated_cuda``: the real CUDA ops of csrc/cuda, host code and kernels,
compiled by the host compiler over the SIMT emulation in tests/cuda_emulation. It then makes those
ops the CPU kernels of marsops' own ops for the session, so every backend-parametrized test of the
``cpu`` backend runs the CUDA code paths on CPU tensors: values, gradients, ignore_index, every
target dtype, empty and non-contiguous inputs. helpers.kernel_backends() names that backend
``cuda_emulated`` in test ids and offers it only for the ops CUDA implements.

The emulated GPU's shape comes from the environment at each launch (tests/cuda_emulation/simt.h):
``MARSOPS_EMULATED_SMS`` (default 132, an H100/H200), ``MARSOPS_EMULATED_SEED`` (schedule order).
"""
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "tests" / "cuda_emulation"
# The ops with a CUDA C++ kernel (csrc/cuda/*_cuda.cu).
OPS = ("focal_loss_forward", "confusion_matrix", "flip_views", "flip_views_sum", "flip_by_flags", "views_argmax")

ENABLED = os.environ.get("MARSOPS_EMULATED_CUDA") == "1"
_library = None  # the torch.library registration, kept alive for the session


def build():
    """Builds (ninja: only what changed) and loads the emulated-CUDA library."""
    from torch.utils import cpp_extension

    build_dir = ROOT / "build" / "cuda_emulation" / "torch_ops"
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p) for p in (SOURCES / "torch_ops").glob("*.cpp")) + [str(SOURCES / "simt.cpp")]
    cpp_extension.load(name="marsops_emulated_cuda", sources=sources, build_directory=str(build_dir),
                       extra_include_paths=[str(SOURCES), str(ROOT / "csrc")],
                       extra_cflags=["-O1", "-g", "-std=c++20", "-Wno-unknown-pragmas"],
                       is_python_module=False, verbose=os.environ.get("MARSOPS_EMULATED_VERBOSE") == "1")


def install():
    """Routes the CPU kernels of marsops' CUDA-implemented ops to their emulated CUDA versions."""
    global _library
    import marsops  # noqa: F401  (registers the ops this overrides)

    build()
    _library = torch.library.Library("marsops", "IMPL")
    for name in OPS:
        _library.impl(name, getattr(torch.ops.marsops_emulated_cuda, name).default, "CPU", allow_override=True)
