"""Builds the compiled kernels against the LibTorch stable ABI (target torch 2.10), so one build
loads on every torch >= 2.10:

  marsops._C       the C++ CPU kernels (always); loads on CPU-only and CUDA builds of torch
  marsops._C_cuda  the CUDA kernels, wherever a CUDA toolkit and a CUDA build of torch are
                   present at build time (no GPU needed to build)

Switches (environment variables):
  MARSOPS_CUDA=1 / 0     force the CUDA kernels on (fail if they cannot be built) / off
  CUDA_HOME              the toolkit; default: $CUDA_PATH, /usr/local/cuda, or nvcc's parent folder
  TORCH_CUDA_ARCH_LIST   GPU architectures; default "8.0;9.0" (A100, H100)
  MAX_JOBS               parallel compile jobs (ninja)
  MARSOPS_PREBUILT=1     compile nothing: package the modules already built in place (marsops/_C*.so),
                         e.g. a wheel of exactly the binaries just tested (.ci/run does this)

`pip install -e .` works as is (pip builds against the torch its isolated build fetches; the
stable ABI makes that fine); `pip install --no-build-isolation -e .` builds against the torch
already installed, faster and offline.
"""
import glob
import os
import platform
import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup

TARGET_TORCH = "2.10"
# The version is written once, in marsops/_version.py (marsops.__version__ imports it).
VERSION = re.search(r'^__version__ = "([^"]+)"$', (Path(__file__).parent / "marsops" / "_version.py").read_text(),
                    re.M).group(1)


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
    reason = "torch is a CPU build" if torch.version.cuda is None else "no CUDA toolkit (nvcc) found"
    if switch in ("0", "off", "false", "no"):
        return False
    if switch in ("1", "on", "true", "yes"):
        if not possible:
            raise RuntimeError(f"MARSOPS_CUDA=1 but the CUDA kernels cannot be built: {reason}")
        return True
    if not possible:
        print(f"marsops: building CPU kernels only ({reason}); set MARSOPS_CUDA=1 to require CUDA")
    return possible


def write_build_info(cuda: bool):
    """marsops/_build_info.py: what the kernels were built against, for load-failure messages."""
    info = dict(torch=torch.__version__, cuda=torch.version.cuda if cuda else None, target_torch=TARGET_TORCH,
                cuda_kernels=cuda)
    text = '"""Written by setup.py: what the compiled kernels were built against."""\n'
    text += "".join(f"{k.upper()} = {v!r}\n" for k, v in info.items())
    path = Path(__file__).parent / "marsops" / "_build_info.py"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def extensions():
    cpu_sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        cpu_sources = [s for s in cpu_sources if "simd_avx" not in s]
    # No TORCH_TARGET_VERSION flag here: csrc/stable.h defines it for the host code, and the SIMD
    # files (ATen vector headers, raw pointers only) must be compiled without it.
    # Hidden visibility: the stable ABI's types are hidden, and nothing but PyInit_* is exported.
    cxx = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fvisibility=hidden", "-Wall", "-Wno-unknown-pragmas",
           "-Wno-psabi"]
    exts = [CppExtension("marsops._C", cpu_sources, extra_compile_args={"cxx": cxx}, py_limited_api=True)]
    cuda = want_cuda()
    if cuda:
        # USE_CUDA declares the stable shim for the current CUDA stream.
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-DUSE_CUDA", "-Xcompiler=-fvisibility=hidden"]
        exts.append(CUDAExtension("marsops._C_cuda", ["csrc/cuda/module.cpp"] + sorted(glob.glob("csrc/cuda/*.cu")),
                                  extra_compile_args={"cxx": cxx + ["-DUSE_CUDA"], "nvcc": nvcc},
                                  py_limited_api=True))
    write_build_info(cuda)
    return exts


class BuildKernels(BuildExtension.with_options(use_ninja=True)):
    def build_extension(self, ext):
        if os.environ.get("MARSOPS_PREBUILT", "0") != "1":
            return super().build_extension(ext)
        built = Path(__file__).parent / self.get_ext_filename(ext.name)  # where an in-place build put it
        if not built.exists():
            raise RuntimeError(f"MARSOPS_PREBUILT=1 but {built} does not exist: build in place first")
        os.makedirs(os.path.dirname(self.get_ext_fullpath(ext.name)), exist_ok=True)
        shutil.copy2(built, self.get_ext_fullpath(ext.name))


EXTRAS = {
    "test": ["pytest", "hypothesis"],
    # Oracles we did not write, used by the tests where installed (torchvision: resolved together with
    # torch, so it matches it).
    "oracles": ["monai", "torchmetrics", "torchvision", "segmentation-models-pytorch", "kornia"],
    # Triton's interpreter runs the Triton kernels on CPU tensors in the tests (CUDA builds of torch
    # bring it anyway).
    "triton": ["triton; platform_system == 'Linux'"],
    "bench": ["kornia", "torchmetrics", "segmentation-models-pytorch", "monai"],
    "plots": ["matplotlib"],
    "train": ["tqdm", "matplotlib"],
    "tune": ["optuna"],
    "docs": ["sphinx", "myst-parser"],
    "examples": ["segmentation-models-pytorch", "monai"],
}
# Rebuilding in place (`python setup.py build_ext --inplace`, `pip install --no-build-isolation`) and
# the tests' emulated-CUDA library (torch.utils.cpp_extension.load) need these in the environment.
EXTRAS["build"] = ["ninja", "setuptools>=64"]
# The README's one install command, `pip install -e ".[dev]"`: everything the tests and train.py use.
EXTRAS["dev"] = sorted({r for k in ("test", "oracles", "triton", "train", "tune", "build") for r in EXTRAS[k]})

setup(
    name="marsops",
    version=VERSION,
    description="Fused CPU/CUDA/Triton kernels for semantic-segmentation training: focal loss, "
    "streaming IoU, flip augmentation; and a Mars-terrain Multipath UNet recipe",
    packages=find_packages(include=["marsops", "marsops.*"]),  # only marsops at top level
    package_data={"marsops": ["py.typed"]},  # PEP 561: the package ships its type hints
    python_requires=">=3.10",
    install_requires=[f"torch>={TARGET_TORCH}", "numpy"],
    extras_require=EXTRAS,
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildKernels},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
