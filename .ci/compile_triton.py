"""Compile every Triton kernel marsops launches for real GPUs (sm_80 and sm_90 PTX + cubin), on a
machine without one.

The interpreter (TRITON_INTERPRET=1, what the test suite runs) executes kernels as numpy and
accepts code the compiler rejects: loop-carried type changes, int64/int32 mix-ups, scalar/tensor
confusion. Here Triton's JIT is pointed at a stand-in driver that reports a GPU target; a compile
hook compiles each launch's exact specialization (argument dtypes, constexprs) through the real
backend (MLIR -> PTX -> ptxas) and skips the launch. The ops are called on CPU tensors, so their
outputs are garbage; only the compiles count.

    python .ci/compile_triton.py [--arch 90 80] [--jobs 2]

Compiling is single-threaded (Python, MLIR, ptxas), so with several architectures each gets its
own process, up to --jobs at a time (default: the machine's cores).
"""
import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time

import torch


class _StandInDriver:
    """Just enough of a Triton driver for the JIT to pick a target and compile."""

    def __init__(self, arch):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


def _install(arch, compiled):
    import triton
    from triton import knobs
    from triton.compiler import ASTSource
    from triton.runtime import driver

    driver.set_active(_StandInDriver(arch))

    seen = set()

    def hook(*, key, fn, compile, **_):
        if (fn.name, str(key)) in seen:
            return True
        seen.add((fn.name, str(key)))
        src = ASTSource(fn.jit_function, compile["signature"], compile["constants"], compile["configs"][0])
        options = {k: compile[k] for k in ("num_warps", "num_ctas", "num_stages", "enable_fp_fusion")}
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # ptxas -v: registers and spills (knobs.nvidia.dump_ptxas_log)
            triton.compile(src, target=driver.active.target, options=options)
        regs = re.findall(r"Used (\d+) registers", log.getvalue())
        spills = re.findall(r"(\d+) bytes spill stores", log.getvalue())
        constants = {k if isinstance(k, str) else fn.jit_function.arg_names[k[0]]: v
                     for k, v in compile["constants"].items()}
        compiled.append((fn.name, arch, int(regs[0]) if regs else None, int(spills[0]) if spills else None,
                         f"num_warps={options['num_warps']} {constants}"))
        return True  # compiled; skip the launch (there is no GPU)

    knobs.runtime.jit_cache_hook = hook
    if hasattr(knobs, "nvidia") and hasattr(knobs.nvidia, "dump_ptxas_log"):
        knobs.nvidia.dump_ptxas_log = True


def _cases():
    """Calls of the public ops covering every kernel's constexpr branches."""
    import marsops

    def logits(N, C, H, W, dtype, class_last=False):
        x = torch.randn(N, C, H, W, dtype=dtype)
        return x.contiguous(memory_format=torch.channels_last) if class_last else x

    def target(N, C, H, W, dtype=torch.int64):
        return torch.randint(0, C, (N, H, W)).to(dtype)

    for C in (5, 70):  # one register tile; chunks with an online softmax (64x128 images: the largest blocks)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x, t = logits(2, C, 64, 128, dtype).requires_grad_(), target(2, C, 64, 128)
            w = torch.rand(C)
            for reduction in ("mean", "sum", "none", "weighted_mean"):
                yield f"focal C={C} {dtype} {reduction}", lambda x=x, t=t, w=w, r=reduction: marsops.focal_loss(
                    x, t, w, gamma=0.5, reduction=r, backend="triton", label_smoothing=0.1)
            yield f"focal+confusion C={C} {dtype}", lambda x=x, t=t: marsops.focal_loss(
                x, t, gamma=2.0, backend="triton", confusion=torch.zeros(C, C, dtype=torch.int64))
            yield f"focal class_last C={C} {dtype}", lambda C=C, dtype=dtype: marsops.focal_loss(
                logits(2, C, 64, 128, dtype, True).requires_grad_(), target(2, C, 64, 128), gamma=0.0, backend="triton")
            for fn in (marsops.dice_loss, marsops.dice_ce_loss, marsops.dice_focal_loss):
                for per_image in (False, True):
                    yield f"{fn.__name__} C={C} {dtype} per_image={per_image}", (
                        lambda fn=fn, x=x, t=t, p=per_image: fn(x, t, per_image=p, backend="triton"))
            yield f"dice_focal smoothing C={C} {dtype}", lambda x=x, t=t, w=w: marsops.dice_focal_loss(
                x, t, focal_weight=w, gamma=1.5, label_smoothing=0.1, backend="triton")
            yield f"confusion C={C} {dtype}", lambda x=x, t=t, C=C: marsops.confusion_matrix(
                x.detach(), t, C, ignore_index=255, backend="triton")
            yield f"ohem_focal C={C} {dtype}", lambda x=x, t=t, w=w: marsops.ohem_focal_loss(
                x, t, 0.5, 0.7, 100, w, backend="triton")
            yield f"ohem_focal class_last C={C} {dtype}", lambda C=C, dtype=dtype: marsops.ohem_focal_loss(
                logits(2, C, 64, 128, dtype, True).requires_grad_(), target(2, C, 64, 128), backend="triton")
            for per_image in (False, True):
                yield f"lovasz C={C} {dtype} per_image={per_image}", (
                    lambda x=x, t=t, p=per_image: marsops.lovasz_softmax_loss(x, t, per_image=p, backend="triton"))
            yield f"lovasz class_last C={C} {dtype}", lambda C=C, dtype=dtype: marsops.lovasz_softmax_loss(
                logits(2, C, 64, 128, dtype, True).requires_grad_(), target(2, C, 64, 128), backend="triton")
        yield f"confusion labels C={C}", lambda C=C: marsops.confusion_matrix(
            target(2, C, 64, 128, torch.uint8), target(2, C, 64, 128), C, backend="triton")
    for dtype in (torch.float32, torch.float16, torch.uint8):
        img, mask = torch.zeros(4, 3, 8, 8, dtype=dtype), torch.zeros(4, 8, 8, dtype=torch.int64)
        yield f"flip4 {dtype}", lambda img=img: marsops.flip4(img, backend="triton")
        yield f"d4 {dtype}", lambda img=img: marsops.d4(img, backend="triton")
        yield f"random_flip {dtype}", lambda img=img, mask=mask: marsops.random_flip(img, mask, p_t=0.5,
                                                                                       backend="triton")
        yield f"random_flip volume {dtype}", lambda dtype=dtype: marsops.random_flip(
            torch.zeros(2, 1, 4, 8, 8, dtype=dtype), None, p_d=0.5, backend="triton")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(2, 3, 64, 128, dtype=dtype).requires_grad_()
        for reduction in ("mean", "none", "sum"):
            yield f"sigmoid_focal {dtype} {reduction}", lambda x=x, r=reduction: marsops.sigmoid_focal_loss(
                x, torch.rand(x.shape, dtype=x.dtype), reduction=r, backend="triton")
        yield f"sigmoid_focal labels {dtype}", lambda x=x: marsops.sigmoid_focal_loss(
            x, torch.randint(0, 2, x.shape, dtype=torch.uint8), None, 0.5, torch.ones(3), 255, backend="triton")
        yield f"sigmoid_focal bool {dtype}", lambda x=x: marsops.sigmoid_focal_loss(
            x, torch.zeros(x.shape, dtype=torch.bool), gamma=0.0, backend="triton")
    for dtype in (torch.float32, torch.bfloat16):
        def scale(dtype=dtype):
            from marsops.triton.scale import scale_  # backward's upstream-gradient scaling (CUDA tensors only)

            scale_(torch.ones(64, dtype=dtype), torch.tensor(2.0))
        yield f"scale_ {dtype}", scale
    yield from _dense_region_cases()
    for C in (5, 70):
        out = torch.randn(16, C, 8, 8)
        yield f"flip4_merge C={C}", lambda out=out: marsops.flip4_merge(out, backend="triton")
        yield f"flip4_argmax C={C}", lambda out=out: marsops.flip4_argmax(out, backend="triton")
        yield f"update_flip4 C={C}", lambda out=out, C=C: marsops.StreamingIoU(C, backend="triton").update_flip4(
            out, torch.randint(0, C, (4, 8, 8)))
        yield f"d4_argmax C={C}", lambda C=C: marsops.d4_argmax(torch.randn(32, C, 8, 8), backend="triton")


def _dense_region_cases():
    """The dense-target region sums (marsops/triton/dense_region.py), called directly: each
    activation in both layouts; dense 0/1 (with an ignore value), soft (with dL/dt) and class-map
    targets; one class (binary), 8 (multi-label), 70 (two class chunks / one 128-class softmax
    tile) and the softmax limit MAX_C. 64x128 images: the largest pixel blocks."""
    from marsops.triton.dense_region import MAX_C, SOFTMAX, dense_region_grad, dense_region_stats

    def run(x, t, activation, class_last=False, is_map=False, has_ignore=False, per_image=False, t_grad=False):
        N, C = x.shape[0], x.shape[2] if class_last else x.shape[1]
        args = (x, t, activation, class_last, is_map, has_ignore, 255, per_image)
        dense_region_stats(*args)
        dense_region_grad(*args, torch.zeros(N if per_image else 1, C, 3), t_grad)

    N, P = 2, 64 * 128
    for activation in range(3):
        for class_last in (False, True):
            for C in ((8, 70) if activation == SOFTMAX else (1, 8, 70)):
                for dtype in ((torch.float32, torch.float16, torch.bfloat16) if C == 8 else (torch.float16,)):
                    shape = (N, P, C) if class_last else (N, C, P)
                    x = torch.rand(shape, dtype=dtype)
                    yield f"dense_region act={activation} C={C} class_last={class_last} {dtype} uint8", (
                        lambda x=x, a=activation, cl=class_last: run(
                            x, torch.zeros(x.shape, dtype=torch.uint8), a, cl, has_ignore=True, per_image=True))
                    if dtype != torch.float16:
                        continue
                    yield f"dense_region act={activation} C={C} class_last={class_last} {dtype} soft", (
                        lambda x=x, a=activation, cl=class_last: run(x, torch.rand(x.shape), a, cl, t_grad=True))
                    if activation != SOFTMAX:
                        yield f"dense_region act={activation} C={C} class_last={class_last} {dtype} map", (
                            lambda x=x, a=activation, cl=class_last: run(
                                x, torch.zeros(N, P, dtype=torch.int64), a, cl, is_map=True, has_ignore=True))
    for t_dtype in (torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int32, torch.int64):
        x = torch.rand(N, 8, P, dtype=torch.float16)
        yield f"dense_region target {t_dtype}", lambda x=x, t_dtype=t_dtype: run(
            x, torch.zeros(x.shape, dtype=t_dtype), SOFTMAX, has_ignore=not t_dtype.is_floating_point, t_grad=True)
    for class_last in (False, True):  # the widest softmax tile
        x = torch.rand((1, 64, MAX_C) if class_last else (1, MAX_C, 64))
        yield f"dense_region softmax C={MAX_C} class_last={class_last}", lambda x=x, cl=class_last: run(
            x, torch.rand(x.shape), SOFTMAX, cl, t_grad=True)


def _one_process_per_arch(args):
    """This script once per architecture, args.jobs at a time; their reports in --arch order."""
    command = [sys.executable, os.path.abspath(__file__)] + (["--verbose"] if args.verbose else [])
    pending, running, status = list(args.arch), [], 0
    while pending or running:
        while pending and len(running) < args.jobs:
            arch, log = pending.pop(0), tempfile.TemporaryFile("w+")  # a file: a full pipe would block the child
            running.append((arch, log, subprocess.Popen(command + ["--arch", str(arch), "--jobs", "1"],
                                                        stdout=log, stderr=subprocess.STDOUT, text=True)))
        arch, log, process = running.pop(0)  # in order, so the reports print in --arch order
        process.wait()
        log.seek(0)
        print(log.read(), end="", flush=True)
        log.close()
        if process.returncode != 0:
            print(f"FAILED: sm_{arch} exited with {process.returncode}")
            status = 1
    return status


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities, e.g. 90 80")
    parser.add_argument("--verbose", action="store_true", help="list the specializations that spill registers")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="architectures compiled at once, one process each")
    args = parser.parse_args()
    if len(args.arch) > 1 and args.jobs > 1:
        return _one_process_per_arch(args)
    import marsops.triton

    if marsops.triton.IMPORT_ERROR:
        print(f"skipped: {marsops.triton.IMPORT_ERROR}")
        return 0
    # A fresh cache: every specialization really goes through the compiler (and ptxas) here.
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="marsops-triton-cache-")
    marsops.triton.INTERPRET = True  # let the ops take CPU tensors; the hook never launches anything
    failures, compiled = [], []
    start = time.perf_counter()
    for arch in args.arch:
        _install(arch, compiled)
        for name, call in _cases():
            before = len(compiled)
            try:
                call()
            except Exception as exc:  # a compile error surfaces here; garbage outputs may raise later checks
                if len(compiled) == before or "CompilationError" in type(exc).__name__ or "PTXAS" in str(exc):
                    failures.append(f"sm_{arch} {name}: {type(exc).__name__}: {str(exc)[:2000]}")
    kernels = sorted({c[0] for c in compiled})
    print(f"compiled {len(compiled)} specializations of {len(kernels)} kernels for sm_{args.arch} in "
          f"{time.perf_counter() - start:.0f} s")
    print(f"{'kernel':28s} {'arch':>5s} {'specializations':>16s} {'max registers':>14s} {'max spill bytes':>16s}")
    for name in kernels:
        for arch in args.arch:
            rows = [c for c in compiled if c[0] == name and c[1] == arch]
            regs = [c[2] for c in rows if c[2] is not None]
            spills = [c[3] for c in rows if c[3] is not None]
            print(f"{name:28s} {'sm_' + str(arch):>5s} {len(rows):16d} {max(regs) if regs else '?':>14} "
                  f"{max(spills) if spills else '?':>16}")
    if args.verbose:
        for c in compiled:
            if c[3]:
                print(f"spills {c[3]:5d} B, {c[2]} registers: {c[0]} sm_{c[1]} {c[4]}")
    for f in failures:
        print("FAILED", f)
    if not compiled:
        print("FAILED: nothing was compiled (has Triton's jit_cache_hook changed?)")
    return 1 if failures or not compiled else 0


if __name__ == "__main__":
    sys.exit(main())
