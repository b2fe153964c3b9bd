"""GPU smoke check: every op (focal loss with and without confusion counts, region and sigmoid focal
losses, Lovász and OHEM losses, confusion matrix, flips, d4, volume flips, flip / d4 TTA argmax
and its counts) on the cuda and triton backends against the reference run on the same device,
over the cases a first GPU run trips on: fp32 / fp16 / bf16 logits, int64 / int32 / uint8
targets, ignore_index, every reduction, 1, 2, 5, 19, 150 and 1000 classes (past 64 the Triton
kernels stream classes in chunks; past 31 the confusion matrix counts with global atomics), one
sample and a batch that fills the GPU, channels_last and sliced inputs, empty batches.

    python .ci/gpu_smoke.py [--out results.json]     # on a GPU machine (.ci/gpu runs it)
    python .ci/gpu_smoke.py --dry-run                # cpu + Triton interpreter, small sizes (CI)
    python .ci/gpu_smoke.py --backend triton         # one backend

Each backend runs in its own process, and each case is synchronised and written to
<out>.jsonl as soon as it ends. A case that leaves the GPU unusable (a device-side assertion, an
illegal address: CUDA errors are sticky) ends its process; the next one resumes with the case
after it, so one crash costs one case, not the rest. Prints one line per case and a summary;
exits 1 if any case fails.
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

DRY = "--dry-run" in sys.argv
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before marsops defines its Triton kernels
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import marsops  # noqa: E402
from marsops import backend as _backend, reference  # noqa: E402
from helpers import TOLERANCE  # noqa: E402

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
TARGETS = [torch.int64, torch.int32, torch.uint8]
CLASSES = [2, 5, 19, 150]


def gen(device, seed):
    """A generator on the device the inputs live on: inputs of 10^8 elements drawn on the host
    would take longer than the checks."""
    return torch.Generator(device).manual_seed(seed)


def close(actual, expected, dtype, what):
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.double(), expected.to(dtype).double(), rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def layout(x, kind):
    """The same values as x, laid out as `kind` (contiguous, channels_last or a strided slice)."""
    if kind == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "sliced":
        return torch.stack([x, torch.zeros_like(x)], dim=-1).flatten(-2)[..., ::2]
    return x


def labels(g, device, c, shape, ignore, tdtype):
    target = torch.randint(0, c, shape, generator=g, device=device)
    target[torch.rand(target.shape, generator=g, device=device) < 0.2] = ignore
    return target.to(tdtype)


def focal_case(backend, device, n, c, spatial, dtype, tdtype, reduction, kind="contiguous", gamma=0.5, seed=0,
               count=False):
    g = gen(device, seed)
    base = (torch.randn((n, c) + spatial, generator=g, device=device) * 3).to(dtype)
    ignore = 255 if tdtype == torch.uint8 else -100
    target = labels(g, device, c, (n,) + spatial, ignore, tdtype)
    weight = torch.rand(c, generator=g, device=device)
    x = layout(base, kind).requires_grad_()
    cm = torch.zeros(c, c, dtype=torch.int64, device=device) if count else None
    loss = marsops.focal_loss(x, target, weight, gamma, ignore, reduction, backend=backend, confusion=cm)
    up = torch.linspace(-1, 2, loss.numel(), dtype=torch.float64, device=device).to(dtype).view(loss.shape)
    (grad,) = torch.autograd.grad(loss, x, up)
    ref_x = base.float().requires_grad_()
    ref = reference.focal_loss(ref_x, target, weight, gamma, ignore, reduction)
    (ref_grad,) = torch.autograd.grad(ref, ref_x, up.float())
    assert loss.dtype == dtype and grad.shape == x.shape
    close(loss.detach(), ref.detach(), dtype, "loss")
    close(grad, ref_grad, dtype, "gradient")
    if count:
        expected = reference.confusion_matrix(base.float(), target, c, ignore)
        assert torch.equal(cm, expected), f"counts differ by up to {(cm - expected).abs().max().item()}"


def confusion_case(backend, device, n, c, spatial, dtype, tdtype, kind="contiguous", from_labels=False, seed=0):
    g = gen(device, seed)
    logits = torch.randn((n, c) + spatial, generator=g, device=device).round().to(dtype)  # rounded: ties
    ignore = 255 if tdtype == torch.uint8 else -1
    target = labels(g, device, c, (n,) + spatial, ignore, tdtype)
    x = layout(logits, kind)
    if from_labels:
        x = x.argmax(1).to(tdtype)
    got = marsops.confusion_matrix(x, target, c, ignore, backend=backend)
    expected = reference.confusion_matrix(x if from_labels else x.float(), target, c, ignore)
    assert torch.equal(got, expected), f"counts differ by up to {(got - expected).abs().max().item()}"


def flip_case(backend, device, shape, dtype, kind="contiguous", seed=0):
    g = gen(device, seed)
    x = (torch.rand(shape, generator=g, device=device) * 200).to(dtype)
    x = layout(x, kind)
    masks = torch.randint(0, 5, (shape[0],) + shape[-2:], generator=g, device=device)
    got, got_masks = marsops.flip4(x, masks, backend=backend)
    flip4_views = [0, 1, 2, 3]
    assert torch.equal(got, reference.flip_views(x, flip4_views)) and torch.equal(
        got_masks, reference.flip_views(masks, flip4_views))
    flags = torch.randint(0, 16, (shape[0],), generator=g, dtype=torch.uint8, device=device)
    op = getattr(torch.ops.marsops, "flip_by_flags" + ("_triton" if backend == "triton" else ""))
    assert torch.equal(op(x, flags, False), reference.flip_by_flags(x, flags))
    if dtype.is_floating_point:
        views = torch.randn((4 * shape[0],) + shape[1:], generator=g, device=device).to(dtype)
        close(marsops.flip4_merge(views, backend=backend), reference.flip_views_sum(views.float(), flip4_views,
                                                                                    scale=0.25), dtype, "merge")
    if shape[-1] == shape[-2]:  # the dihedral views of squares
        sq, sq_masks = marsops.d4(x, masks, backend=backend)
        d4_views = list(marsops.augment.D4_VIEWS)
        assert torch.equal(sq, reference.flip_views(x, d4_views))
        assert torch.equal(sq_masks, reference.flip_views(masks, d4_views))


def region_case(backend, device, name, n, c, spatial, dtype, per_image, kind="contiguous", seed=0):
    g = gen(device, seed)
    base = (torch.randn((n, c) + spatial, generator=g, device=device) * 3).to(dtype)
    target = labels(g, device, c, (n,) + spatial, -100, torch.int64)
    kw = dict(per_image=per_image)
    if name in ("dice_focal_loss", "dice_ce_loss"):  # the losses with a focal / CE term
        kw["label_smoothing"] = 0.1
    x = layout(base, kind).requires_grad_()
    loss = getattr(marsops, name)(x, target, backend=backend, **kw)
    (grad,) = torch.autograd.grad(loss * 3, x)
    ref_x = base.float().requires_grad_()
    ref = getattr(marsops, name)(ref_x, target, backend="reference", **kw)
    (ref_grad,) = torch.autograd.grad(ref * 3, ref_x)
    close(loss.detach(), ref.detach(), dtype, "loss")
    close(grad, ref_grad, dtype, "gradient")


def sigmoid_case(backend, device, shape, dtype, soft, reduction, seed=0):
    g = gen(device, seed)
    base = (torch.randn(shape, generator=g, device=device) * 3).to(dtype)
    if soft:
        target, ignore = torch.rand(shape, generator=g, device=device).to(dtype), None
    else:
        target, ignore = labels(g, device, 2, shape, 255, torch.uint8), 255
    pw = torch.rand(shape[1], generator=g, device=device) + 0.5
    x = base.requires_grad_()
    loss = marsops.sigmoid_focal_loss(x, target, 0.25, 2.0, pw, ignore, reduction, backend=backend)
    up = torch.linspace(-1, 2, loss.numel(), dtype=torch.float64, device=device).to(dtype).view(loss.shape)
    (grad,) = torch.autograd.grad(loss, x, up)
    ref_x = base.float().requires_grad_()
    ref = marsops.sigmoid_focal_loss(ref_x, target.float() if soft else target, 0.25, 2.0, pw, ignore, reduction,
                                     backend="reference")
    (ref_grad,) = torch.autograd.grad(ref, ref_x, up.float())
    close(loss.detach(), ref.detach(), dtype, "loss")
    close(grad, ref_grad, dtype, "gradient")


def lovasz_case(backend, device, n, c, spatial, dtype, per_image, seed=0):
    """The loss against the float64 reference on the same rounded logits; the gradient finite (it
    follows the sort order, which roundoff may change between near-equal errors)."""
    g = gen(device, seed)
    base = (torch.randn((n, c) + spatial, generator=g, device=device) * 3).to(dtype)
    target = labels(g, device, c, (n,) + spatial, -100, torch.int64)
    x = base.clone().requires_grad_()
    loss = marsops.lovasz_softmax_loss(x, target, per_image=per_image, backend=backend)
    (grad,) = torch.autograd.grad(loss, x)
    ref = marsops.lovasz_softmax_loss(base.double(), target, per_image=per_image, backend="reference")
    close(loss.detach(), ref, dtype, "loss")
    assert grad.shape == x.shape and torch.isfinite(grad).all(), "non-finite gradient"


def ohem_case(backend, device, n, c, spatial, dtype, min_kept, seed=0):
    """OHEM focal loss (thresh 0.7) against the reference: few pixels, so none lies within a
    rounding of the threshold and both keep the same set."""
    g = gen(device, seed)
    base = (torch.randn((n, c) + spatial, generator=g, device=device) * 3).to(dtype)
    target = labels(g, device, c, (n,) + spatial, -100, torch.int64)
    weight = torch.rand(c, generator=g, device=device) + 0.5
    x = base.clone().requires_grad_()
    loss = marsops.ohem_focal_loss(x, target, 0.5, 0.7, min_kept, weight, -100, backend=backend)
    (grad,) = torch.autograd.grad(loss, x)
    ref_x = base.float().requires_grad_()
    ref = marsops.ohem_focal_loss(ref_x, target, 0.5, 0.7, min_kept, weight, -100, backend="reference")
    (ref_grad,) = torch.autograd.grad(ref, ref_x)
    close(loss.detach(), ref.detach(), dtype, "loss")
    close(grad, ref_grad, dtype, "gradient")


def volume_case(backend, device, shape, dtype, seed=0):
    g = gen(device, seed)
    x = (torch.rand(shape, generator=g, device=device) * 200).to(dtype)
    masks = torch.randint(0, 5, (shape[0],) + shape[2:], generator=g, device=device)
    views = list(range(8))
    got, got_masks = marsops.flip4(x, masks, dims=(-3, -2, -1), backend=backend)
    assert torch.equal(got, reference.flip_views(x, views)) and torch.equal(got_masks, reference.flip_views(masks, views))


def tta_case(backend, device, n, c, side, dtype, views, softmax, kind="contiguous", seed=0):
    """flip4_argmax / d4_argmax and StreamingIoU.update_flip4 / update_d4 against the reference
    merge: the same predictions except where the merged scores' top two are within a rounding."""
    g = gen(device, seed)
    k = len(views)
    outputs = layout((torch.randn((k * n, c, side, side), generator=g, device=device) * 3).to(dtype), kind)
    target = labels(g, device, c, (n, side, side), 255, torch.uint8)
    d4 = k == 8
    pred = (marsops.d4_argmax if d4 else marsops.flip4_argmax)(outputs, softmax=softmax, backend=backend)
    scores = outputs.float().softmax(1) if softmax else outputs.float()
    merged = reference.flip_views_sum(scores, views, scale=1.0 / k)
    top2 = merged.topk(min(2, c), dim=1).values
    near_tie = (top2[:, 0] - top2[:, -1]).abs() <= 1e-5 * top2[:, 0].abs().clamp_min(1) if c > 1 else \
        torch.zeros_like(pred, dtype=torch.bool)
    expected = merged.argmax(1)
    wrong = (pred != expected) & ~near_tie
    assert not wrong.any(), f"{int(wrong.sum())} predictions differ from the reference merge away from ties"
    metric = marsops.StreamingIoU(c, ignore_index=255, device=device, backend=backend)
    (metric.update_d4 if d4 else metric.update_flip4)(outputs, target, softmax=softmax)
    counted = reference.confusion_matrix(pred, target, c, 255)  # the kernel's own predictions, counted
    assert torch.equal(metric.matrix, counted), "update counts differ from the counted predictions"


def cases(backends, device):
    """(name, thunk) for every check; dtypes and target dtypes rotate so that every value of each
    appears with every class count without running the full product."""
    big = (2, 19, 32, 64) if DRY else (64, 19, 256, 512)  # about 160 M logits: fills the GPU's SMs many times
    reductions = marsops.focal.REDUCTIONS
    for backend in backends:
        for i, (c, reduction) in enumerate(itertools.product(CLASSES, reductions)):
            dtype, tdtype = FLOATS[i % 3], TARGETS[(i // 3) % 3]
            yield (f"focal {backend} C={c} {reduction} {dtype} target {tdtype}",
                   lambda b=backend, c=c, r=reduction, d=dtype, t=tdtype: focal_case(b, device, 3, c, (7, 9), d, t, r))
        for kind in ("channels_last", "sliced"):
            yield (f"focal {backend} {kind}", lambda b=backend, k=kind: focal_case(
                b, device, 2, 5, (8, 16), torch.float16, torch.int64, "mean", kind=k))
        yield (f"focal {backend} N=1 gamma 2.7", lambda b=backend: focal_case(
            b, device, 1, 5, (64, 128), torch.float32, torch.int64, "weighted_mean", gamma=2.7))
        yield (f"focal {backend} large {big}", lambda b=backend: focal_case(
            b, device, big[0], big[1], big[2:], torch.bfloat16, torch.uint8, "mean"))
        for reduction in reductions:
            yield (f"focal {backend} empty {reduction}", lambda b=backend, r=reduction: focal_case(
                b, device, 0, 5, (4, 4), torch.float32, torch.int64, r))
        for c, dtype in ((2, torch.float32), (5, torch.float16), (19, torch.bfloat16), (150, torch.float32)):
            yield (f"focal {backend} confusion= C={c} {dtype}", lambda b=backend, c=c, d=dtype: focal_case(
                b, device, 3, c, (7, 9), d, torch.int64, "mean", count=True))
        yield (f"focal {backend} confusion= channels_last", lambda b=backend: focal_case(
            b, device, 2, 5, (8, 16), torch.float32, torch.int64, "mean", kind="channels_last", count=True))
        yield (f"focal {backend} C=1000", lambda b=backend: focal_case(
            b, device, 2, 1000, (3, 5), torch.float32, torch.int64, "mean", count=True))
        yield (f"focal {backend} confusion= large {big}", lambda b=backend: focal_case(
            b, device, big[0], big[1], big[2:], torch.float16, torch.int64, "mean", count=True))
        for i, c in enumerate(CLASSES + [1000]):
            dtype, tdtype = (FLOATS + [torch.float64])[i % 4], TARGETS[i % 3]
            yield (f"confusion {backend} C={c} {dtype} target {tdtype}", lambda b=backend, c=c, d=dtype, t=tdtype:
                   confusion_case(b, device, 3, c, (5, 11), d, t))
            yield (f"confusion {backend} C={c} from labels", lambda b=backend, c=c, t=tdtype: confusion_case(
                b, device, 3, c, (5, 11), torch.float32, t, from_labels=True))
        for kind in ("channels_last", "sliced"):
            yield (f"confusion {backend} {kind}", lambda b=backend, k=kind: confusion_case(
                b, device, 2, 5, (8, 16), torch.bfloat16, torch.int32, kind=k))
        yield (f"confusion {backend} large {big}", lambda b=backend: confusion_case(
            b, device, big[0], big[1], big[2:], torch.float16, torch.uint8))
        yield (f"confusion {backend} empty", lambda b=backend: confusion_case(
            b, device, 0, 5, (4, 4), torch.float32, torch.int64))
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.bool, torch.int64):
            yield (f"volume flips {backend} {dtype}", lambda b=backend, d=dtype: volume_case(b, device, (2, 3, 4, 5, 6), d))
            for shape in ((1, 1, 1, 5), (3, 2, 7, 9), (0, 3, 4, 4), (2, 3, 6, 6)):
                yield (f"flips {backend} {dtype} {shape}", lambda b=backend, s=shape, d=dtype: flip_case(b, device, s, d))
        for kind in ("channels_last", "sliced"):
            yield (f"flips {backend} {kind}", lambda b=backend, k=kind: flip_case(
                b, device, (4, 3, 16, 24), torch.float32, kind=k))
        if _backend.unavailable_reason(backend, "region_stats", device) is None:  # Triton only on GPUs
            for i, (name, c) in enumerate(itertools.product(("dice_focal_loss", "dice_ce_loss", "tversky_loss"),
                                                            (1, 5, 19, 150))):
                dtype, per_image = FLOATS[i % 3], bool(i % 2)
                yield (f"{name} {backend} C={c} {dtype} per_image={per_image}", lambda b=backend, n=name, c=c,
                       d=dtype, p=per_image: region_case(b, device, n, 3, c, (7, 9), d, p))
            yield (f"dice_loss {backend} channels_last", lambda b=backend: region_case(
                b, device, "dice_loss", 2, 5, (8, 16), torch.float16, False, kind="channels_last"))
            yield (f"dice_focal_loss {backend} large {big}", lambda b=backend: region_case(
                b, device, "dice_focal_loss", big[0], big[1], big[2:], torch.bfloat16, True))
            yield (f"dice_loss {backend} empty", lambda b=backend: region_case(
                b, device, "dice_loss", 0, 5, (4, 4), torch.float32, True))
        if _backend.unavailable_reason(backend, "sigmoid_focal_loss_forward", device) is None:
            for i, (soft, reduction) in enumerate(itertools.product((True, False), ("none", "sum", "mean"))):
                yield (f"sigmoid_focal {backend} soft={soft} {reduction} {FLOATS[i % 3]}", lambda b=backend, s=soft,
                       r=reduction, d=FLOATS[i % 3]: sigmoid_case(b, device, (3, 4, 7, 9), d, s, r))
            yield (f"sigmoid_focal {backend} large {big}", lambda b=backend: sigmoid_case(
                b, device, big, torch.float16, False, "mean"))
        if _backend.unavailable_reason(backend, "lovasz_softmax_forward", device) is None:
            for i, (c, per_image) in enumerate(itertools.product((1, 5, 19), (False, True))):
                yield (f"lovasz {backend} C={c} per_image={per_image} {FLOATS[i % 3]}", lambda b=backend, c=c,
                       p=per_image, d=FLOATS[i % 3]: lovasz_case(b, device, 3, c, (7, 9), d, p))
            lovasz_big = (2, 5, 16, 32) if DRY else (16, 19, 128, 256)
            yield (f"lovasz {backend} large {lovasz_big}", lambda b=backend: lovasz_case(
                b, device, lovasz_big[0], lovasz_big[1], lovasz_big[2:], torch.float32, True))
        if _backend.unavailable_reason(backend, "ohem_select", device) is None:
            for i, (c, min_kept) in enumerate(itertools.product((2, 5, 19), (0, 50))):
                yield (f"ohem {backend} C={c} min_kept={min_kept} {FLOATS[i % 3]}", lambda b=backend, c=c,
                       k=min_kept, d=FLOATS[i % 3]: ohem_case(b, device, 3, c, (7, 9), d, k))
        flip4_views, d4_views = list(range(4)), list(marsops.augment.D4_VIEWS)
        for i, (c, softmax) in enumerate(itertools.product((1, 5, 19, 150), (True, False))):
            yield (f"flip4_argmax {backend} C={c} softmax={softmax}", lambda b=backend, c=c, s=softmax, i=i: tta_case(
                b, device, 2, c, 12, FLOATS[i % 3], flip4_views, s))
        yield (f"d4_argmax {backend} C=5", lambda b=backend: tta_case(b, device, 2, 5, 12, torch.float16, d4_views,
                                                                   True))
        yield (f"flip4_argmax {backend} channels_last", lambda b=backend: tta_case(
            b, device, 2, 5, 16, torch.float32, flip4_views, True, kind="channels_last"))
        tta_big = (2, 5, 32) if DRY else (64, 19, 512)
        yield (f"d4_argmax {backend} large {tta_big}", lambda b=backend: tta_case(
            b, device, tta_big[0], tta_big[1], tta_big[2], torch.bfloat16, d4_views, True))
        large_images = (8, 3, 64, 64) if DRY else (256, 3, 512, 512)
        yield (f"flips {backend} large {large_images}", lambda b=backend: flip_case(
            b, device, large_images, torch.float16))


def run_child(backend, device, start, jsonl):
    """Runs the backend's cases from `start`, appending one JSON line per case. Returns 3 right
    after a case that left CUDA unusable (its errors are sticky), so the driver resumes after it."""
    for index, (name, check) in enumerate(list(cases([backend], device))):
        if index < start:
            continue
        with open(jsonl, "a") as f:  # so a crash is blamed on the case that was running, not the next
            f.write(json.dumps(dict(backend=backend, index=index, case=name, status="started")) + "\n")
        t0 = time.perf_counter()
        try:
            check()
            if device == "cuda":
                torch.cuda.synchronize()  # an asynchronous error belongs to this case, not the next
            status, detail = "ok", ""
        except Exception as exc:  # noqa: BLE001  (every failure is reported, then the next case runs)
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            traceback.print_exc(limit=3)
        seconds = time.perf_counter() - t0
        record = dict(backend=backend, index=index, case=name, status=status, seconds=round(seconds, 3), detail=detail)
        with open(jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{status:4s} {seconds:7.2f}s  {name}  {detail}", flush=True)
        if status != "ok" and device == "cuda" and not cuda_usable():
            print(f"gpu_smoke: CUDA is unusable after '{name}'; resuming in a new process", flush=True)
            return 3
    return 0


def cuda_usable() -> bool:
    try:
        torch.ones(1, device="cuda").add_(1).cpu()
        torch.cuda.synchronize()
        return True
    except Exception:  # noqa: BLE001
        return False


def read_records(jsonl, finished=True):
    """The cases' results (finished) or their start markers."""
    if not jsonl.exists():
        return []
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    return [r for r in records if (r["status"] != "started") == finished]


def drive(backends, device, jsonl):
    """One child process per backend; a child that ends early (a sticky CUDA error, a crash) is
    followed by a new one from the next case; a case that killed its process is recorded as such."""
    for backend in backends:
        total = len(list(cases([backend], device)))
        start = 0
        while start < total:
            cmd = [sys.executable, __file__, "--child", backend, "--start", str(start), "--jsonl", str(jsonl)]
            rc = subprocess.call(cmd + (["--dry-run"] if DRY else []))
            done = {r["index"] for r in read_records(jsonl) if r["backend"] == backend and r["index"] >= start}
            begun = [r["index"] for r in read_records(jsonl, finished=False) if r["backend"] == backend
                     and r["index"] >= start]
            if rc == 0 and len(done) == total - start:
                break
            running = [i for i in begun if i not in done]  # started, never finished: it ended the process
            if running:
                crashed = running[0]
                name = next(r["case"] for r in read_records(jsonl, finished=False) if r["backend"] == backend
                            and r["index"] == crashed)
                with open(jsonl, "a") as f:
                    f.write(json.dumps(dict(backend=backend, index=crashed, case=name, status="FAIL", seconds=0.0,
                                            detail=f"the process died (exit {rc})")) + "\n")
                print(f"FAIL  {name}  the process died (exit {rc})", flush=True)
                start = crashed + 1
            elif done:  # it stopped between cases (exit 3 after a sticky error, or dying while exiting)
                start = max(done) + 1
            else:  # it died before its first case (an import error): nothing more to learn here
                print(f"gpu_smoke: the {backend} process died before any case (exit {rc})", flush=True)
                with open(jsonl, "a") as f:
                    f.write(json.dumps(dict(backend=backend, index=start, case=f"{backend}: start", status="FAIL",
                                            seconds=0.0, detail=f"the process died before any case (exit {rc})"))
                            + "\n")
                break


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="cpu and the Triton interpreter, small sizes")
    parser.add_argument("--out", help="write the results as JSON here (and each case, as it ends, to <out>.jsonl)")
    parser.add_argument("--backend", choices=("cuda", "triton", "cpu"), action="append",
                        help="only these backends (repeatable)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--jsonl", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if args.child:
        return run_child(args.child, device, args.start, Path(args.jsonl))
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_smoke: no GPU visible (use --dry-run on CPU machines)")
    wanted = tuple(args.backend or (("cpu", "triton") if args.dry_run else ("cuda", "triton")))
    backends = [b for b in wanted if _backend.unavailable_reason(b, "focal_loss_forward", device) is None]
    missing = sorted(set(wanted) - set(backends))
    print(f"gpu_smoke on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'dry run'}), "
          f"torch {torch.__version__}, backends {backends}" + (f", NOT AVAILABLE: {missing}" if missing else ""),
          flush=True)
    out = Path(args.out) if args.out else Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_smoke_{os.getpid()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    jsonl.unlink(missing_ok=True)
    drive(backends, device, jsonl)
    results = read_records(jsonl)
    failed = [r for r in results if r["status"] != "ok"]
    print(f"gpu_smoke: {len(results) - len(failed)} of {len(results)} cases passed"
          + (f"; failed: {[r['case'] for r in failed]}" if failed else ""))
    if args.out:
        out.write_text(json.dumps(dict(device=device, torch=torch.__version__, backends=backends, missing=missing,
                                       results=results), indent=2) + "\n")
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
