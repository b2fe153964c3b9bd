"""What every benchmark shares: timing (median with p20/p80 of repeated runs), peak memory,
copy bandwidth measured in the same run, the machine description, tables and JSON."""
import gc
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import marsops
from marsops import backend as _backend

RESULTS = Path(os.environ.get("MARSOPS_BENCH_RESULTS") or Path(__file__).parent / "results")
# The report's class weights (background 0, then soil, bedrock, sand, big rocks).
REPORT_WEIGHTS = [0.0, 0.0359, 0.0523, 0.0663, 9.2720]
# Peer libraries and torch.compile baselines by their names in the rows' labels: in smoke mode
# their failures stay rows (a new release's bug is not ours; the tests compile the reference),
# an error in any other row is fatal.
PEERS = ("kornia", "smp", "MONAI", "torchvision", "torchmetrics", "ttach", "torch.compile")


def smoke() -> bool:
    """MARSOPS_BENCH_SMOKE=1 (python -m benchmarks --smoke): every benchmark at tiny sizes with two
    timed runs, and an error in a marsops or reference row fatal. A check that the scripts still
    run from end to end (CI runs it), not a measurement."""
    return os.environ.get("MARSOPS_BENCH_SMOKE") == "1"


def sized(shapes: dict) -> dict:
    """A benchmark's {label: shape}: as given, or in smoke mode the same labels with at most 2
    samples and 16 elements along each dimension after the channels."""
    if not smoke():
        return shapes
    return {label: (min(s[0], 2), s[1], *(min(d, 16) for d in s[2:])) for label, s in shapes.items()}


def kernel_backends(device, op):
    """The compiled backends that can run `op` on `device` (the Triton interpreter is a test
    vehicle, not a contender: left out on CPUs)."""
    return [b for b in _backend.BACKENDS[1:] if _backend.unavailable_reason(b, op, device.type) is None
            and not (b == "triton" and device.type == "cpu")]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, repeats=15, warmup=3):
    """(median, p20, p80) time of fn() in milliseconds: wall time on CPUs, CUDA events around each
    call on GPUs (the GPU's own clock, launch overhead included)."""
    if smoke():
        repeats, warmup = 2, 1
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(samples, n=5)
    return statistics.median(samples), q[0], q[3]


def paired_speedup(fn_base, fn, device, repeats=15, warmup=2):
    """How much faster fn runs than fn_base (> 1: faster), from runs that alternate between the two,
    the median of each pair's ratio: a machine whose speed drifts between two separately timed
    rows (other tenants, clocks) moves both halves of a pair alike."""
    if smoke():
        repeats, warmup = 2, 1
    for _ in range(warmup):
        fn_base()
        fn()
    ratios = []
    for i in range(repeats):
        first, second = (fn_base, fn) if i % 2 == 0 else (fn, fn_base)
        times = {}
        for f in (first, second):
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[f] = time.perf_counter() - t0
        ratios.append(times[fn_base] / times[fn])
    return statistics.median(ratios)


def gpu_launches(fn, device):
    """Kernels, memsets and copies fn() puts on the GPU (torch's profiler), or None on CPUs."""
    if device.type != "cuda":
        return None
    fn()  # compiled and cached first
    sync(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def peak_extra_mb(fn, device):
    """Peak memory fn() allocates beyond what was live before, in MB: torch's allocator statistics
    on GPUs; on CPUs the running sum, in time order, of every op's own allocations minus frees as
    torch's profiler records them (op granularity). marsops' pool of reusable buffers is emptied
    first, so the buffers it hands out are counted."""
    marsops.empty_cache()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def measure(fn, device, repeats, **labels):
    """A result row for fn(): labels, ms / p20 / p80 and peak MB, or the error if it fails (a peer
    that cannot handle a shape is reported, not fatal)."""
    try:
        med, p20, p80 = time_ms(fn, device, repeats=repeats)
        peak = peak_extra_mb(fn, device)
        launches = gpu_launches(fn, device)
    except Exception as exc:  # noqa: BLE001
        if smoke() and not any(peer in str(labels.get("impl", "")) for peer in PEERS):
            raise
        return {**labels, "error": f"{type(exc).__name__}: {str(exc)[:120]}"}
    row = {**labels, "ms": med, "p20": p20, "p80": p80, "peak MB": peak}
    if launches is not None:
        row["launches"] = launches
    return row


def measure_traffic(fn, device, repeats, moved_bytes, bandwidth, clone_bandwidth=None, **labels):
    """measure(), with the rate at which fn moves the bytes it must read and write at the least:
    GB/s, and that as a share of the copy bandwidth measured in the same run ("% copy bw": a
    256 MB copy_ into existing memory, copy_bandwidth_gbs) and, when given, of the clone of the
    benchmarked tensor ("% clone bw", clone_bandwidth_gbs)."""
    row = measure(fn, device, repeats, **labels)
    if "ms" in row:
        row["GB/s"] = moved_bytes / (row["ms"] * 1e-3) / 1e9
        row["% copy bw"] = 100 * row["GB/s"] / bandwidth
        if clone_bandwidth:
            row["% clone bw"] = 100 * row["GB/s"] / clone_bandwidth
    return row


def add_speedups(rows, column, base_ms):
    """row[column] = base_ms / row's ms for every timed row; nothing when the baseline failed."""
    for r in rows:
        if "ms" in r and base_ms:
            r[column] = base_ms / r["ms"]


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the calls that read a tensor's values into Python (item, bool, float, int, tolist,
    numpy), by the call site outside torch: each is a host synchronisation when the tensor lives
    on a GPU. (torch.optim's AdamW reads its step counters, which stay on the host in GPU
    training too: those are not synchronisations.)"""

    READS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
             torch.Tensor.__index__, torch.Tensor.tolist, torch.Tensor.numpy}

    def __init__(self):
        super().__init__()
        self.sites = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            import traceback

            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
            site = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            if any("/torch/optim/" in f.filename for f in traceback.extract_stack()[:-1]):
                site = "torch.optim (host-side step counters)"
            self.sites[site] = self.sites.get(site, 0) + 1
        return func(*args, **(kwargs or {}))

    def device_reads(self):
        """Reads that are synchronisations in GPU training (all but the optimizer's counters)."""
        return sum(n for site, n in self.sites.items() if not site.startswith("torch.optim"))


def copy_bandwidth_gbs(device, mb=256):
    """Read+write bandwidth of a large tensor copy into existing memory, GB/s."""
    if smoke():
        mb = 4
    src = torch.empty(mb * 2**20 // 4, device=device).uniform_()
    dst = torch.empty_like(src)
    median, _, _ = time_ms(lambda: dst.copy_(src), device, repeats=9)
    return 2 * src.numel() * 4 / (median * 1e-3) / 1e9


def clone_bandwidth_gbs(x, device, repeats=9):
    """Read+write bandwidth of x.clone() on the benchmarked tensor itself, GB/s. Unlike
    copy_bandwidth_gbs it allocates its output: on CPUs an allocation this large is fresh pages
    from the kernel every time, faulted in during the copy, so it is the lower of the two
    baselines (the kernels' outputs come from a cache of mapped buffers, csrc/cpu/buffer_pool.h)."""
    x = x.detach()
    median, _, _ = time_ms(lambda: x.clone(), device, repeats=repeats)
    return 2 * x.numel() * x.element_size() / (median * 1e-3) / 1e9


def machine(device):
    desc = {
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(device)
    return desc


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown_table(rows, columns):
    head = "| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def save(name, device, rows, extra=None):
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if device.type == "cuda" else "cpu"
    path = RESULTS / f"{name}_{tag}.json"
    payload = {"benchmark": name, "machine": machine(device), "rows": rows, **(extra or {})}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def setup(doc, argv):
    """(args, device, copy bandwidth GB/s) for a benchmark script with a --quick flag."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="report shapes only, fewer repeats")
    args = parser.parse_args(argv)
    device = device_from_env()
    return args, device, copy_bandwidth_gbs(device)


def device_from_env():
    return torch.device(os.environ.get("MARSOPS_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
