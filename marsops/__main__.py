"""``python -m marsops``: what this installation is and what it can run, for bug reports (like
``python -m torch.utils.collect_env``): the marsops and torch versions, the CPU capability the
SIMD kernels use, each backend's state, and what the compiled kernels were built against."""
import os
import platform
import sys

import torch

import marsops
from marsops import _extension, backend as _backend
from marsops import triton as _triton


def _triton_version() -> str:
    if _triton.IMPORT_ERROR:
        return f"not installed ({_triton.IMPORT_ERROR})"
    import triton

    return triton.__version__ + (" (TRITON_INTERPRET=1: the interpreter)" if _triton.INTERPRET else "")


def report() -> str:
    """The report ``python -m marsops`` prints, as one string."""
    build = _extension.BUILD
    lines = [
        f"marsops {marsops.__version__}  ({os.path.dirname(marsops.__file__)})",
        f"torch {torch.__version__}  (CUDA {torch.version.cuda or 'none: a CPU build'})",
        f"python {platform.python_version()}  ({platform.platform()}, {platform.machine()})",
        # marsops' SIMD kernels are picked with torch's rule, so they use this capability too.
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}  (ATEN_CPU_CAPABILITY="
        f"{os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}), {torch.get_num_threads()} threads",
        f"GPUs {', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or 'none visible'}",
        f"triton {_triton_version()}",
        "",
        f"backends (backend='auto' tries {', '.join(_backend.CUDA_PREFERENCE)} for CUDA tensors, cpu, reference for"
        f" CPU tensors; MARSOPS_BACKEND={os.environ.get('MARSOPS_BACKEND', 'unset')}):",
    ]
    lines += [f"  {name:10s} {state}" for name, state in marsops.backends().items()]
    lines += ["", "build:"]
    if build is None:
        lines.append("  nothing built (a source checkout): every op runs the pure-PyTorch reference")
    else:
        lines.append(f"  built against torch {build.TORCH} for torch >= {build.TARGET_TORCH} (LibTorch stable ABI)")
        lines.append(f"  marsops._C       {'loaded' if _extension._C is not None else _extension.LOAD_ERROR}")
        cuda_state = "loaded" if _extension._C_cuda is not None else _extension.CUDA_LOAD_ERROR
        cuda_built = f"built with CUDA {build.CUDA}" if build.CUDA_KERNELS else "not built"
        lines.append(f"  marsops._C_cuda  {cuda_built}; {cuda_state}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
