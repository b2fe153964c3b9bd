"""The compiled modules: built against the stable ABI only, loaded, and never failing silently."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import marsops
from marsops import _extension

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(marsops.__file__).parent
built = pytest.mark.skipif(_extension.BUILD is None, reason="the compiled kernels are not built")


def modules(name):
    return sorted(PACKAGE.glob(f"{name}.*so"))


@built
def test_cpu_kernels_load_and_backends_say_so():
    assert _extension._C is not None and _extension.LOAD_ERROR is None
    assert marsops.backends()["cpu"] == "available (cpu tensors)"
    if _extension.BUILD.CUDA_KERNELS and torch.version.cuda:
        assert _extension._C_cuda is not None, _extension.CUDA_LOAD_ERROR


@built
@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
def test_modules_need_only_the_torch_2_10_stable_abi():
    paths = [str(p) for p in modules("_C") + modules("_C_cuda")]
    result = subprocess.run([sys.executable, str(ROOT / ".ci" / "check_stable_abi.py"), *paths],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def import_in_subprocess(package_root):
    code = "import marsops; b = marsops.backends(); print('CPU:', b['cpu']); print('CUDA:', b['cuda'])"
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                          cwd=package_root, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package_root)})


@built
@pytest.mark.parametrize("module", ["_C", "_C_cuda"])
def test_a_module_that_fails_to_load_is_a_warning_and_a_reason(tmp_path, module):
    if module == "_C_cuda" and not (_extension.BUILD.CUDA_KERNELS and torch.version.cuda):
        pytest.skip("no CUDA module to break with this torch")
    copy = tmp_path / "marsops"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for so in copy.glob(f"{module}.*so"):
        so.write_bytes(b"not a shared library")
    result = import_in_subprocess(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"marsops.{module} failed to load" in result.stderr and "RuntimeWarning" in result.stderr
    assert f"built against torch {_extension.BUILD.TORCH}" in result.stderr
    line = [x for x in result.stdout.splitlines() if x.startswith("CPU:" if module == "_C" else "CUDA:")][0]
    assert f"marsops.{module} failed to load" in line
    if module == "_C_cuda":  # the CPU kernels are unaffected
        assert "CPU: available" in result.stdout
