"""The kernels that the H200 run found far from the memory roofline, for ncu (.ci/gpu's profile
stage): the focal loss forward + backward and the confusion matrix on the report's batch
(256x5x64x128 fp32), NCHW then channels_last, between cudaProfilerStart / Stop so that
`ncu --profile-from-start off` sees only them, after a warm-up.

    ncu --clock-control none --profile-from-start off --section SpeedOfLight python .ci/gpu_profile.py
    python .ci/gpu_profile.py cpu      # the same calls on the cpu backend (.ci/gpu --dry-run)
    python .ci/gpu_profile.py cuda --host

--host: the host's side instead. On the H200 a focal forward + backward took 0.86 ms of wall time
while its kernels ran for 0.1 ms (ncu), so the rest is the host: Python checks, the custom op's
autograd wrapper, launches. torch.profiler over repeated calls, tables by self CPU time.
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import marsops  # noqa: E402


def inputs(device):
    g = torch.Generator(device).manual_seed(0)
    n = 256 if device == "cuda" else 2
    x = torch.randn(n, 5, 64, 128, device=device, generator=g)
    t = torch.randint(0, 5, (n, 64, 128), device=device, generator=g)
    w = torch.tensor([0.0, 1.0, 1.5, 2.0, 20.0], device=device)  # the report's kind of weights
    return {"NCHW": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}, t, w


def focal(logits, t, w, backend):
    leaf = logits.detach().requires_grad_()
    marsops.focal_loss(leaf, t, w, 0.5, backend=backend).backward()


def confusion(logits, t, _w, backend):
    marsops.confusion_matrix(logits, t, 5, backend=backend)


def main(device="cuda"):
    layouts, t, w = inputs(device)

    def step(logits):
        focal(logits, t, w, device)
        confusion(logits, t, w, device)

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


def host(device="cuda", calls=50):
    """Wall time per call against the device's busy time, then where the host's time goes."""
    from torch.profiler import ProfilerActivity, profile

    layouts, t, w = inputs(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for op in (focal, confusion):
        for name, logits in layouts.items():
            for _ in range(5):  # warm-up
                op(logits, t, w, device)
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                op(logits, t, w, device)
            sync()
            wall_us = (time.perf_counter() - start) / calls * 1e6
            with profile(activities=activities) as prof:
                for _ in range(calls):
                    op(logits, t, w, device)
                sync()
            events = prof.key_averages()
            device_us = sum(e.self_device_time_total for e in events) / calls
            print(f"\n== {op.__name__} {name}: {wall_us:.0f} us wall per call, {device_us:.0f} us of device time "
                  f"per call (unprofiled wall; device time from the profiled calls)")
            print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--host" in args:
        args.remove("--host")
        host(*args)
    else:
        main(*args)
