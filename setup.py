"""Builds marsops._C: the C++ CPU kernels always, the CUDA kernels wherever a CUDA toolkit and a
CUDA build of torch are present (no GPU needed to build).

Switches (environment variables):
  MARSOPS_CUDA=1 / 0     force the CUDA kernels on (fail if they cannot be built) / off
  CUDA_HOME              the toolkit; default: $CUDA_PATH, /usr/local/cuda, or nvcc's parent folder
  TORCH_CUDA_ARCH_LIST   GPU architectures; default "8.0;9.0" (A100, H100)
  MAX_JOBS               parallel compile jobs (ninja)

Install with `pip install --no-build-isolation -e .` (the build needs the installed torch).
"""
import glob
import os
import shutil

from setuptools import find_packages, setup


def find_cuda_home():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        # /usr/local/bin/nvcc is often a link: resolve it, or torch guesses /usr/local.
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME  # torch.utils.cpp_extension reads it at import
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def want_cuda():
    switch = os.environ.get("MARSOPS_CUDA", "auto").lower()
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    reason = ("torch is a CPU build" if torch.version.cuda is None else "no CUDA toolkit (nvcc) found")
    if switch in ("0", "off", "false", "no"):
        return False
    if switch in ("1", "on", "true", "yes"):
        if not possible:
            raise RuntimeError(f"MARSOPS_CUDA=1 but the CUDA kernels cannot be built: {reason}")
        return True
    if not possible:
        print(f"marsops: building CPU kernels only ({reason}); set MARSOPS_CUDA=1 to require CUDA")
    return possible


def extensions():
    cpu_sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -fopenmp: at::parallel_for is inlined from ATen's headers and runs serially without it.
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wno-unknown-pragmas"]
    link = ["-fopenmp"]
    if not want_cuda():
        return [CppExtension("marsops._C", cpu_sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)]
    # Only c10/cuda headers are used: ATen/cuda ones would need the pip nvidia-* include folders,
    # whose CUDA version need not match the local nvcc's headers.
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    return [
        CUDAExtension(
            "marsops._C",
            cpu_sources + sorted(glob.glob("csrc/cuda/*.cu")),
            extra_compile_args={"cxx": cxx + ["-DMARSOPS_WITH_CUDA"], "nvcc": nvcc + ["-DMARSOPS_WITH_CUDA"]},
            extra_link_args=link,
        )
    ]


setup(
    name="marsops",
    version="0.1.0",
    description="Fused CPU/CUDA/Triton kernels for semantic-segmentation training: focal loss, "
    "streaming IoU, flip augmentation; and a Mars-terrain Multipath UNet recipe",
    packages=find_packages(include=["marsops", "marsops.*", "model", "model.*", "training", "training.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "test": ["pytest", "hypothesis"],
        "bench": ["kornia", "torchmetrics", "segmentation-models-pytorch", "monai"],
        "plots": ["matplotlib"],
        "train": ["tqdm", "matplotlib"],
        "tune": ["optuna"],
    },
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
