"""What the tests share: which backends can run here, tolerances per dtype, label errors."""
import re
import subprocess
import sys

import pytest
import torch

import marsops
from marsops import backend as _backend

HAS_GPU = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


def kernel_backends(op_name: str):
    """(backend, device) pairs whose kernels can run here: the C++ CPU kernel, Triton (its
    interpreter on CPU when no GPU is present), and the CUDA kernel and Triton on a GPU."""
    pairs = [("cpu", "cpu"), ("triton", "cpu"), ("cuda", "cuda"), ("triton", "cuda")]
    out = []
    for b, d in pairs:
        if d == "cuda" and not HAS_GPU:
            continue
        if d == "cpu" and b == "triton" and HAS_GPU:
            continue  # the interpreter is only for GPU-less machines
        if _backend.unavailable_reason(b, op_name, d) is None:
            out.append((b, d))
    return out


def backend_ids(pairs):
    return [f"{b}-{d}" for b, d in pairs]


# (rtol, atol) for comparing a kernel's output with the fp32/fp64 reference on the same inputs,
# both rounded to the output dtype. From the roundings the design makes: the kernels compute in
# fp32 (fp64 for fp64) and round their outputs once, a 'none' gradient twice (saved, then scaled
# by the upstream gradient), the reference once: at most 3 units of roundoff u of the dtype
# (fp16 u = 2^-11 = 4.9e-4, bf16 u = 2^-8 = 3.9e-3), plus the fp32 arithmetic (exp, log, sums
# over up to 19 classes, about 1e-6 relative at most) that dominates for fp32. rtol is ~8u for
# the half types; atol covers values near 0, whose relative error is unbounded.
TOLERANCE = {
    torch.float64: (1e-9, 1e-11),
    torch.float32: (2e-4, 2e-6),
    torch.float16: (4e-3, 1e-4),
    torch.bfloat16: (3e-2, 1e-3),
}


def assert_close(actual, expected, dtype=None):
    rtol, atol = TOLERANCE[dtype or actual.dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol)


def assert_compiles_like_eager(loss_fn, out_channels, masks):
    """A conv model + loss_fn compiles with no graph break (fullgraph) and matches eager: the loss
    and the model's gradients."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, out_channels, 3, padding=1)
    images = torch.randn(masks.shape[0], 1, *masks.shape[-2:])

    def step(images, masks):
        return loss_fn(model(images), masks)

    eager = step(images, masks)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    loss = torch.compile(step, fullgraph=True)(images, masks)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert_close(loss, eager)
    for a, b in zip(grads, eager_grads):
        assert_close(a, b)


def assert_label_error(device, code, match):
    """Runs `code` (torch and marsops in scope), which must fail on a bad label. On CPU that is an
    exception. On CUDA the check is a device-side assertion, which ends the CUDA context for the
    rest of the process, so the code runs in a subprocess that must exit non-zero with the message
    on stderr."""
    if device == "cpu":
        with pytest.raises((ValueError, RuntimeError), match=match):
            exec(code, {"torch": torch, "marsops": marsops})
        return
    script = f"import torch, marsops\n{code}\ntorch.cuda.synchronize()\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, f"no device-side assertion fired for: {code}"
    assert re.search(match, result.stderr), result.stderr[-3000:]


assert marsops  # imported here so conftest's environment is in place first
