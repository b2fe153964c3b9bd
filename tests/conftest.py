"""Test configuration: Triton runs through its interpreter where no GPU is present, hypothesis
uses a derandomized profile in CI (first calls JIT-compile, so no deadline), and a session with
MARSOPS_EMULATED_CUDA=1 runs the CUDA kernels on the CPU (tests/emulated_cuda.py)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before marsops (and its Triton kernels) load

from hypothesis import settings  # noqa: E402

import emulated_cuda  # noqa: E402

if emulated_cuda.ENABLED:  # the CUDA kernels, on the SIMT emulation, as the cpu backend's kernels
    emulated_cuda.install()
    import pytest  # noqa: E402

    @pytest.fixture(autouse=True)
    def emulated_gpu(request, monkeypatch):
        """Each test on its own emulated GPU: H100/H200 (132 SMs), A100 (108) or a 1-2 SM one whose
        grids of a few blocks stride over the input; and its own schedule order (by test name)."""
        import zlib

        h = zlib.crc32(request.node.nodeid.encode())
        monkeypatch.setenv("MARSOPS_EMULATED_SMS", str((132, 108, 2, 1)[h % 4]))
        monkeypatch.setenv("MARSOPS_EMULATED_SEED", str(h // 4 % 4))

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=40, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=40)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
