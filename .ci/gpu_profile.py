"""The kernels that the H200 run found far from the memory roofline, for ncu (.ci/gpu's profile
stage): the focal loss forward + backward and the confusion matrix on the report's batch
(256x5x64x128 fp32), NCHW then channels_last, between cudaProfilerStart / Stop so that
`ncu --profile-from-start off` sees only them, after a warm-up.

    ncu --clock-control none --profile-from-start off --section SpeedOfLight python .ci/gpu_profile.py
    python .ci/gpu_profile.py cpu      # the same calls on the cpu backend (.ci/gpu --dry-run)
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import marsops  # noqa: E402


def main(device="cuda"):
    g = torch.Generator(device).manual_seed(0)
    n = 256 if device == "cuda" else 2
    x = torch.randn(n, 5, 64, 128, device=device, generator=g)
    t = torch.randint(0, 5, (n, 64, 128), device=device, generator=g)
    w = torch.tensor([0.0, 1.0, 1.5, 2.0, 20.0], device=device)  # the report's kind of weights
    layouts = {"NCHW": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}

    def step(logits):
        leaf = logits.detach().requires_grad_()
        marsops.focal_loss(leaf, t, w, 0.5, backend=device).backward()
        marsops.confusion_matrix(logits, t, 5, backend=device)

    for logits in layouts.values():  # warm-up: allocations, lazy loading
        step(logits)
    profiling = device == "cuda"
    if profiling:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
    for name, logits in layouts.items():
        print(f"profiled: focal loss forward + backward, then confusion matrix, {name} logits", flush=True)
        step(logits)
    if profiling:
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
