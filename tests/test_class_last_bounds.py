"""The class-last transposes read and write only their own block (the kernels run them on blocks
whose neighbours other threads may be writing): tests/cpp/class_last_bounds.cpp puts each block
against a guard page, for every compiled class count, and checks the class-last argmax tree
(argmax_tree.h) against torch.argmax's rule the same way; built here once per CPU capability."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CAPABILITIES = {
    "avx2": (["avx2", "fma", "f16c"], ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]),
    "avx512": (["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"],
               ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
                "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]),
}


def cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="guard pages by mmap / mprotect, on Linux")
@pytest.mark.skipif(not (ROOT / "csrc" / "cpu" / "simd.h").exists(),
                    reason="needs the C++ sources (an installed wheel's test run has only tests/)")
@pytest.mark.parametrize("capability", sorted(CAPABILITIES))
def test_class_last_transposes_stay_inside_their_block(capability, tmp_path):
    needs, flags = CAPABILITIES[capability]
    missing = set(needs) - cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {sorted(missing)}")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("needs a C++ compiler")
    from torch.utils.cpp_extension import include_paths
    exe = tmp_path / "class_last_bounds"
    build = subprocess.run([compiler, "-O3", "-std=c++20", *flags, f"-I{ROOT / 'csrc' / 'cpu'}",
                            *[f"-I{p}" for p in include_paths()], str(ROOT / "tests" / "cpp" / "class_last_bounds.cpp"),
                            "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    # A read or write past a block is a segmentation fault (return code -11).
    assert run.returncode == 0, f"return code {run.returncode}\n{run.stdout[-4000:]}{run.stderr[-2000:]}"
    assert "classes 1..32: ok" in run.stdout
