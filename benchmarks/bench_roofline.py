"""How close the CPU/GPU kernels of focal loss (forward+backward) and the confusion matrix come to
the memory roofline: each op's minimum traffic per second as a share of the bandwidth of
x.clone() and of x.copy_ into existing memory, both on the benchmarked logits themselves, timed in
the same rounds as the ops (issue 26), on NCHW and channels_last (NHWC) logits.

    python -m benchmarks.bench_roofline [--quick]

Every round times each call once, in a rotating order, so a machine whose speed drifts (other
tenants) moves every column alike; the table reports medians over the rounds. "vs NCHW" is the
median over rounds of the NCHW time / NHWC time of the same op in the same round.

The two baselines differ: x.clone() allocates its output, and on CPUs an allocation this large is
fresh pages from the kernel every time (page faults included in its time), while copy_ writes
into memory that is already mapped. The kernels write their gradient into a cached buffer
(csrc/cpu/buffer_pool.h), so copy_ is the stricter baseline for them.
"""
import statistics
import time

import torch

import marsops

from . import harness

SHAPES = harness.sized({"256x5x64x128": (256, 5, 64, 128), "64x19x64x128": (64, 19, 64, 128)})
LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


def _inputs(shape, device):
    g = torch.Generator().manual_seed(0)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g).to(device)
    t = torch.randint(0, c, (n, h, w), generator=g).to(device)
    weight = (torch.tensor(harness.REPORT_WEIGHTS) if c == 5 else torch.rand(c, generator=g)).to(device)
    return x, t, weight


def _calls(shape, device, backend):
    """name -> (fn, layout, minimum bytes moved, baseline bytes) for one shape."""
    x0, t, weight = _inputs(shape, device)
    calls = {}
    for layout, fmt in LAYOUTS.items():
        x = x0.contiguous(memory_format=fmt)
        xg = x.clone().requires_grad_()
        dst = torch.empty_like(x)
        nx, nt = x.numel() * x.element_size(), t.numel() * t.element_size()

        def focal(xg=xg):
            marsops.focal_loss(xg, t, weight, 0.5, backend=backend).backward()
            xg.grad = None

        calls[("clone", layout)] = (lambda x=x: x.clone(), 2 * nx)
        calls[("copy_", layout)] = (lambda x=x, dst=dst: dst.copy_(x), 2 * nx)
        calls[("focal fwd+bwd", layout)] = (focal, 2 * nx + nt)  # read x, y; write the gradient
        calls[("confusion", layout)] = (lambda x=x: marsops.confusion_matrix(x, t, shape[1], backend=backend),
                                        nx + nt)
    return calls


def measure_shape(label, shape, device, backend, rounds):
    calls = _calls(shape, device, backend)
    keys = list(calls)
    for k in keys:  # warm up: compiled, buffers cached
        calls[k][0]()
        calls[k][0]()
    samples = {k: [] for k in keys}
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            harness.sync(device)
            t0 = time.perf_counter()
            calls[k][0]()
            harness.sync(device)
            samples[k].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for layout in LAYOUTS:
        clone_ms = statistics.median(samples[("clone", layout)])
        copy_ms = statistics.median(samples[("copy_", layout)])
        clone_gbs = calls[("clone", layout)][1] / clone_ms / 1e6
        copy_gbs = calls[("copy_", layout)][1] / copy_ms / 1e6
        for op in ("focal fwd+bwd", "confusion"):
            ms = statistics.median(samples[(op, layout)])
            gbs = calls[(op, layout)][1] / ms / 1e6
            row = {"op": op, "shape": label, "layout": layout, "ms": ms, "GB/s": gbs,
                   "clone ms": clone_ms, "clone GB/s": clone_gbs, "% clone bw": 100 * gbs / clone_gbs,
                   "copy_ GB/s": copy_gbs, "% copy_ bw": 100 * gbs / copy_gbs}
            if layout == "NHWC":
                row["vs NCHW"] = statistics.median(a / b for a, b in zip(samples[(op, "NCHW")], samples[(op, layout)]))
            rows.append(row)
    return rows


COLUMNS = ["op", "shape", "layout", "ms", "GB/s", "clone ms", "clone GB/s", "% clone bw", "copy_ GB/s", "% copy_ bw",
           "vs NCHW"]


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    device = harness.device_from_env()
    backend = "cuda" if device.type == "cuda" else "cpu"
    rounds = args.rounds or (2 if harness.smoke() else 9 if args.quick else 25)
    rows = []
    for label, shape in SHAPES.items():
        rows += measure_shape(label, shape, device, backend, rounds)
    m = harness.machine(device)
    where = m.get("gpu") or f"{m['cpu']}, {m['threads']} threads, CPU capability {m['cpu_capability']}"
    print(f"roofline: marsops {backend}, fp32 logits, int64 targets; {where}; median of {rounds} interleaved rounds")
    print(harness.markdown_table(rows, COLUMNS))
    print(f"saved {harness.save('roofline', device, rows, {'rounds': rounds})}")
    return rows


if __name__ == "__main__":
    main()
