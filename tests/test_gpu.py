"""GPU-only checks: no op waits for the host (torch's sync debug mode turns any synchronisation
into an error). They skip on machines without a CUDA GPU."""
import pytest
import torch

import marsops
from marsops import backend as _backend
from helpers import _run_in_fresh_cuda_process, backend_ids, kernel_backends, requires_gpu

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
    marsops.focal_loss(x, t, w, 0.5, backend=backend, confusion=metric).backward()
    images, masks = marsops.flip4(x.detach(), t, backend=backend)
    marsops.flip4_merge(images, backend=backend)
    marsops.flip4_argmax(images, backend=backend)
    metric.update_flip4(images, t)
    marsops.d4(x.detach()[..., :16], t[..., :16], backend=backend)
    marsops.random_flip(x.detach(), t, generator=g, backend=backend)
    if _backend.unavailable_reason(backend, "region_stats", "cuda") is None:
        for name in ("dice_loss", "dice_focal_loss", "tversky_loss"):
            getattr(marsops, name)(x, t, classes=[1, 2, 3, 4], backend=backend).backward()
    if _backend.unavailable_reason(backend, "sigmoid_focal_loss_forward", "cuda") is None:
        soft = torch.rand(4, 5, 16, 32, device="cuda", generator=g)
        hard = (soft > 0.5).to(torch.uint8)
        marsops.sigmoid_focal_loss(x, soft, backend=backend).backward()
        marsops.sigmoid_focal_loss(x, hard, ignore_index=255, backend=backend).backward()
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
    assert metric.local.sum().item() == 4 * 4 * 16 * 32  # update twice, the loss's counts, update_flip4


@requires_gpu
@pytest.mark.parametrize("backend,device", GPU, ids=backend_ids(GPU))
def test_training_step_never_synchronises(backend, device):
    """train.py's step (forward, the loss counting the training confusion matrix, backward, AdamW)
    under torch's sync debug mode: any host synchronisation is an error."""
    from marsops import models
    from marsops.recipes.mars import loop

    torch.manual_seed(0)
    net = models.MultipathUNet(width=4).to("cuda", memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    crit = marsops.FocalLoss(torch.tensor([0.0, 1.0, 1.0, 1.0, 5.0], device="cuda"), gamma=0.5, backend=backend)
    metric = marsops.StreamingIoU(5, classes=[1, 2, 3, 4], device="cuda", backend=backend)
    step = loop.make_step(net, crit, opt, torch.device("cuda"), metric=metric)
    x = torch.rand(8, 1, 64, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (8, 64, 128), device="cuda")
    step(x, y)
    torch.cuda.synchronize()
    total = torch.zeros((), device="cuda", dtype=torch.float64)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            total += step(x, y).double()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(total) and metric.local.sum().item() == 4 * 8 * 64 * 128


@requires_gpu
def test_train_with_a_cuda_graph(tmp_path):
    """--cuda-graph: the captured step trains (loss falls, finite) and writes every file."""
    import csv

    import train

    common = ["--synthetic-train", "96", "--synthetic-test", "4", "--width", "4", "--batch-size", "32",
              "--no-progress", "--epochs", "3", "--device", "cuda", "--cache", str(tmp_path / "cache"),
              "--out", str(tmp_path / "runs")]
    train.main([*common, "--name", "graph", "--cuda-graph"])
    rows = list(csv.DictReader(open(tmp_path / "runs" / "graph" / "metrics.csv")))
    assert len(rows) == 3 and all(float(r["train_loss"]) == float(r["train_loss"]) for r in rows)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert 0.0 <= float(rows[-1]["train_miou"]) <= 1.0


@requires_gpu
def test_cuda_graph_resume_matches_an_uninterrupted_run(tmp_path):
    """The capture's warm-up steps are undone, so a run killed and resumed with --cuda-graph ends
    where an uninterrupted one does."""
    import train
    from marsops.recipes.mars import checkpoint

    common = ["--synthetic-train", "96", "--synthetic-test", "4", "--width", "4", "--batch-size", "32",
              "--no-progress", "--device", "cuda", "--cuda-graph", "--deterministic", "--cache",
              str(tmp_path / "cache"), "--out", str(tmp_path / "runs")]
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        train.main([*common, "--epochs", "3", "--name", "straight"])
        train.main([*common, "--epochs", "2", "--name", "killed"])
        train.main(["--resume", str(tmp_path / "runs" / "killed"), "--epochs", "3", "--no-progress"])
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    a = checkpoint.load(tmp_path / "runs" / "straight" / "last.pt")
    b = checkpoint.load(tmp_path / "runs" / "killed" / "last.pt")
    assert a["state"] == b["state"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_fresh_processes_report_exit_codes_and_output():
    """The bad-label tests' runner on GPUs (tests/cuda_zygote.py), checked where it runs too:
    each snippet gets its own process, its output (stdout and stderr) and its exit code."""
    rc, out = _run_in_fresh_cuda_process("import sys; print('on stdout'); sys.stderr.write('on stderr\\n'); "
                                         "raise ValueError('marsops.focal_loss: label 7')")
    assert rc == 1 and "on stdout" in out and "on stderr" in out and "label 7" in out
    assert _run_in_fresh_cuda_process("x = torch.ones(2).sum()") == (0, "")
    assert _run_in_fresh_cuda_process("import os; os._exit(3)")[0] == 3
    rc, out = _run_in_fresh_cuda_process("import time; time.sleep(30)", timeout=1)
    assert rc is None and "timed out" in out
