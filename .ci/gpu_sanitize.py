"""A small run of every CUDA kernel, for compute-sanitizer (memcheck, racecheck, synccheck): each
launch path once (the focal loss with and without confusion counts and its shared-memory
histograms, NCHW and channels_last logits, the confusion matrix's shared and global-atomics
paths, flips, d4, volume flips, the TTA argmax with and without counts), with sizes that end
mid-block and mid-warp. .ci/gpu runs it under the sanitizer
with PYTORCH_NO_CUDA_MEMORY_CACHING=1, so an out-of-bounds access is not hidden inside a larger
cached block."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import marsops  # noqa: E402


def main(backend="cuda"):
    g = torch.Generator(device="cuda").manual_seed(0)
    for c, shape in ((5, (3, 37, 29)), (150, (2, 5, 7)), (1, (2, 3))):
        x = torch.randn((shape[0], c) + shape[1:], device="cuda", generator=g).half().requires_grad_()
        t = torch.randint(0, c, shape, device="cuda", generator=g)
        t.view(-1)[::7] = -100
        w = torch.rand(c, device="cuda", generator=g)
        for reduction in marsops.focal.REDUCTIONS:
            marsops.focal_loss(x, t, w, 0.5, reduction=reduction, backend=backend).sum().backward()
        for logits in (x, x.detach().contiguous(memory_format=torch.channels_last).requires_grad_() if x.dim() == 4
                       else x):
            cm = torch.zeros(c, c, dtype=torch.int64, device="cuda")
            marsops.focal_loss(logits, t, w, 0.5, backend=backend, confusion=cm).backward()
        with torch.no_grad():
            marsops.focal_loss(x, t, None, 2.0, backend=backend)
        for num_classes in (c, 100):  # 100 classes: C * C > 8192 bins, the global-atomics path
            tc = t.clamp(0, min(c, num_classes) - 1)  # labels inside [0, num_classes)
            marsops.confusion_matrix(tc, tc, num_classes, backend=backend)
        marsops.confusion_matrix(x.detach(), t, c, ignore_index=-100, backend=backend)
    for dtype in (torch.uint8, torch.float32, torch.bool, torch.int64):
        images = (torch.rand(3, 2, 13, 17, device="cuda") * 100).to(dtype)
        out, _ = marsops.flip4(images, backend=backend)
        marsops.random_flip(images, generator=g, backend=backend)
        if dtype.is_floating_point:
            marsops.flip4_merge(out, backend=backend)
        square = (torch.rand(2, 3, 11, 11, device="cuda") * 100).to(dtype)
        marsops.d4(square, backend=backend)
        marsops.flip4((torch.rand(2, 1, 3, 5, 7, device="cuda") * 100).to(dtype), dims=(-3, -2, -1), backend=backend)
    for c in (5, 100):  # the TTA argmax: predictions, and counts in shared (5) or global (100: C * C > 8192) bins
        outputs = torch.randn(8, c, 11, 11, device="cuda", generator=g)
        target = torch.randint(0, c, (2, 11, 11), device="cuda", generator=g)
        marsops.flip4_argmax(outputs[:4].contiguous(memory_format=torch.channels_last), backend=backend)
        marsops.d4_argmax(outputs, softmax=False, backend=backend)
        metric = marsops.StreamingIoU(c, device="cuda", backend=backend)
        metric.update_flip4(outputs[:4], target[:1])
        metric.update_d4(outputs, target[:1])
    torch.cuda.synchronize()
    print(f"sanitize run of the {backend} kernels done")


if __name__ == "__main__":
    main(*sys.argv[1:])
