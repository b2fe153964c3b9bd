"""What the tests share: which backends can run here, tolerances per dtype, label errors."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import marsops
from emulated_cuda import ENABLED as EMULATED_CUDA, OPS as EMULATED_OPS
from marsops import backend as _backend

HAS_GPU = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


def kernel_backends(op_name: str):
    """(backend, device) pairs whose kernels can run here: the C++ CPU kernel, Triton (its
    interpreter on CPU when no GPU is present), and the CUDA kernel and Triton on a GPU. In a
    session with MARSOPS_EMULATED_CUDA=1 (tests/emulated_cuda.py) only the cpu backend, whose
    kernels are then the CUDA kernels run on the SIMT emulation, for the ops CUDA implements."""
    if EMULATED_CUDA:
        return [("cpu", "cpu")] if op_name in EMULATED_OPS else []
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


def numpy_confusion(pred, target, num_classes, ignore_index):
    """An oracle we did not write: numpy's bincount over flattened (true, predicted) pairs."""
    pred, target = np.asarray(pred).ravel().astype(np.int64), np.asarray(target).ravel().astype(np.int64)
    keep = np.ones_like(target, dtype=bool) if ignore_index is None else target != ignore_index
    return np.bincount(target[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes)


def run_under_cpu_capability(capability: str, test_file: str, selection: str) -> str:
    """Runs `pytest test_file -k selection` in a child process with ATEN_CPU_CAPABILITY=capability
    (torch reads it once per process, and marsops' C++ CPU kernels are built once per capability);
    skips the calling test where this CPU cannot run that capability. Fails on the child's failure;
    returns its output."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           env=env, capture_output=True, text=True, check=True)
    if probe.stdout.strip().lower() != capability:
        pytest.skip(f"this CPU cannot run {capability} (torch chose {probe.stdout.strip()})")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k", selection],
                            env=env, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(test_file)))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result.stdout


def backend_ids(pairs):
    return [f"{'cuda_emulated' if EMULATED_CUDA and b == 'cpu' else b}-{d}" for b, d in pairs]


def computes_fp64(backend: str) -> bool:
    """Whether the backend's fused focal loss computes float64 logits in float64: the reference and
    the C++ CPU kernel do; the CUDA and Triton kernels compute in fp32 and refuse them."""
    return backend == "reference" or (backend == "cpu" and not EMULATED_CUDA)


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


def assert_compiles_like_eager(loss_fn, out_channels, masks, device="cpu"):
    """A conv model + loss_fn compiles with no graph break (fullgraph) and matches eager: the loss
    and the model's gradients, on `device`."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, out_channels, 3, padding=1).to(device)
    images = torch.randn(masks.shape[0], 1, *masks.shape[-2:]).to(device)
    masks = masks.to(device)

    def step(images, masks):
        return loss_fn(model(images), masks)

    eager = step(images, masks)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    # Every call compiles this same `step` code object for another loss: without a reset, the suite
    # runs into dynamo's recompile limit (8) and fullgraph turns that into a failure.
    torch._dynamo.reset()
    loss = torch.compile(step, fullgraph=True)(images, masks)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert_close(loss, eager)
    for a, b in zip(grads, eager_grads):
        assert_close(a, b)


def assert_label_error(device, code, match, cpu_error=(ValueError, RuntimeError)):
    """Runs `code` (torch and marsops in scope), which must fail on a bad label. On CPU that is an
    exception of type `cpu_error`. On CUDA the check is a device-side assertion, which ends the CUDA context for the
    rest of the process, so the code runs in a fresh process that must fail with the message in
    its output (the device prints its assertion; the host raises "device-side assert")."""
    if device == "cpu":
        with pytest.raises(cpu_error, match=match):
            exec(code, {"torch": torch, "marsops": marsops})
        return
    rc, output = _run_in_fresh_cuda_process(code)
    assert rc is not None, f"the fresh process did not report back for: {code}\n{output[-2000:]}"
    assert rc != 0, f"no device-side assertion fired for: {code}\n{output[-2000:]}"
    assert re.search(match, output), output[-3000:]


def run_gloo_processes(worker, nprocs=2) -> dict:
    """Runs worker(rank, world, port, results) in `nprocs` spawned processes that can form a gloo
    group on 127.0.0.1:port; returns what they put in `results`."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.start_processes(worker, args=(nprocs, port, results), nprocs=nprocs, join=True, start_method="spawn")
    return dict(results)


_ZYGOTE = None


def _run_in_fresh_cuda_process(code, timeout=300):
    """(exit code, stdout + stderr) of `code` run in a new process with its own CUDA context,
    forked by tests/cuda_zygote.py (started once per test session)."""
    global _ZYGOTE
    import json
    import os
    import select
    import subprocess
    import tempfile

    if _ZYGOTE is None or _ZYGOTE.poll() is not None:
        _ZYGOTE = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "cuda_zygote.py")],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        _ZYGOTE.stdin.write(json.dumps({"code": code, "log": log.name}) + "\n")
        _ZYGOTE.stdin.flush()
        ready, _, _ = select.select([_ZYGOTE.stdout], [], [], timeout)
        if not ready:  # a hung snippet: end the zygote and its child; the next call starts another
            os.killpg(_ZYGOTE.pid, 9)
            _ZYGOTE.wait()
            return None, f"timed out after {timeout} s\n" + log.read()
        answer = _ZYGOTE.stdout.readline()
        if not answer:
            return None, "the zygote process died\n" + log.read()
        return json.loads(answer), log.read()


assert marsops  # imported here so conftest's environment is in place first
