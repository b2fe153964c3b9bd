"""GPU-only checks: no op waits for the host (torch's sync debug mode turns any synchronisation
into an error). They skip on machines without a CUDA GPU."""
import pytest
import torch

import marsops
from helpers import backend_ids, kernel_backends, requires_gpu

GPU = [(b, d) for b, d in kernel_backends("focal_loss_forward") if d == "cuda"]


def every_op(backend):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, 5, 16, 32, device="cuda", requires_grad=True)
    t = torch.randint(0, 5, (4, 16, 32), device="cuda", generator=g)
    w = torch.rand(5, device="cuda")
    for reduction in marsops.focal.REDUCTIONS:
        loss = marsops.focal_loss(x, t, w, 0.5, ignore_index=3, reduction=reduction, backend=backend)
        loss.sum().backward()
    metric = marsops.StreamingIoU(5, classes=[1, 2, 3, 4], device="cuda", backend=backend)
    metric.update(x.detach(), t)
    metric.update(x.detach().argmax(1), t)
    images, masks = marsops.flip4(x.detach(), t, backend=backend)
    marsops.flip4_merge(images, backend=backend)
    marsops.random_flip(x.detach(), t, generator=g, backend=backend)
    return metric


@requires_gpu
@pytest.mark.parametrize("backend,device", GPU, ids=backend_ids(GPU))
def test_no_op_synchronises_with_the_host(backend, device):
    every_op(backend)  # first calls compile (Triton) and allocate
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        metric = every_op(backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert metric.local.sum().item() == 2 * 4 * 16 * 32
