"""Runs the CUDA device code on the CPU and says what it found (.ci/emulate_cuda calls this).

1. kernel_checks: every path of the real kernels against loops written in the checks, built three
   ways: plain (real GPU grids: 132 and 108 SMs, and 1-2 SM grids, at several schedule seeds),
   under ThreadSanitizer (races within and between blocks; every block of a 2-8 block grid in
   flight at once, two schedule seeds) and under AddressSanitizer + UndefinedBehaviorSanitizer
   (out-of-bounds shared and global accesses).
2. selftest: kernels with seeded bugs that each check must catch, and their clean twins.
3. The test suite's backend-parametrized tests with the CUDA ops run on the emulation
   (MARSOPS_EMULATED_CUDA=1, tests/emulated_cuda.py): the same properties as the other backends.

Ends with one line: ``emulate_cuda: N passed, M failed``; exits non-zero on any failure.
    python tests/cuda_emulation/run.py [--skip-pytest] [--jobs 2]
"""
import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILD = ROOT / "build" / "cuda_emulation"

# build name -> (flags for the checks' code, flags for simt.cpp, link flags). TSan: the scheduler
# is left uninstrumented (its bookkeeping must neither race nor synchronise) and told SIMT_TSAN.
BUILDS = {
    "plain": ([], [], []),
    "tsan": (["-fsanitize=thread"], ["-DSIMT_TSAN"], ["-fsanitize=thread"]),
    "asan": (["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"],
             ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"], ["-fsanitize=address,undefined"]),
}
SANITIZER_ENV = {
    "TSAN_OPTIONS": "exitcode=66 halt_on_error=1 report_signal_unsafe=0",
    "ASAN_OPTIONS": "exitcode=67 halt_on_error=1 detect_leaks=0",
    "UBSAN_OPTIONS": "exitcode=68 halt_on_error=1 print_stacktrace=1",
}
# Seeded bug -> the checks that must catch it ("values": wrong results in the plain build).
SELFTESTS = {
    "none": set(),
    "missing-barrier": {"values", "tsan"},
    "missing-fence": {"tsan"},
    "last-block-by-index": {"values", "tsan"},
    "read-past-end": {"asan"},
    "wrong-stride": {"values"},
}
REPORTS = {"tsan": "ThreadSanitizer", "asan": "AddressSanitizer|runtime error:"}


def torch_include() -> str:
    import torch.utils.cpp_extension as ext

    return ext.include_paths()[0]  # header-only parts: Half, BFloat16


def compile_all(jobs: int):
    BUILD.mkdir(parents=True, exist_ok=True)
    common = ["g++", "-std=c++20", "-O1", "-g", f"-I{torch_include()}", "-Wall", "-Wno-unknown-pragmas"]

    def build(name):
        cxx, simt_flags, link = BUILDS[name]
        simt_obj = BUILD / f"simt_{name}.o"
        subprocess.run(common + simt_flags + ["-c", str(HERE / "simt.cpp"), "-o", str(simt_obj)], check=True)
        out = []
        for program in ("kernel_checks", "selftest"):
            exe = BUILD / f"{program}_{name}"
            subprocess.run(common + cxx + [str(HERE / f"{program}.cpp"), str(simt_obj), "-o", str(exe), "-lpthread"]
                           + link, check=True)
            out.append(exe)
        return out

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(build, BUILDS))


def run(cmd, env=None, timeout=600):
    """The finished process; a hang (fibers cannot be pre-empted: a kernel that loops for ever)
    counts as a failure with exit code -9."""
    try:
        return subprocess.run(cmd, env={**os.environ, **SANITIZER_ENV, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, -9, e.stdout or "", f"timed out after {timeout} s")


def kernel_checks(build: str):
    """(passed, failed, lines to show) of one build's kernel checks."""
    args = [] if build == "plain" else ["--quick"]
    p = run([str(BUILD / f"kernel_checks_{build}")] + args)
    m = re.search(r"kernel_checks: (\d+) passed, (\d+) failed", p.stdout)
    passed, failed = (int(m.group(1)), int(m.group(2))) if m else (0, 1)
    report = build in REPORTS and re.search(REPORTS[build], p.stderr)
    shown = [line for line in p.stdout.splitlines() if line.startswith("FAIL")]
    if report or p.returncode not in (0, 1) or not m:
        failed += 1
        shown.append(f"{build}: exit {p.returncode}\n" + p.stderr[-4000:])
    return passed, failed, shown


def selftest(bug: str):
    """Which checks caught `bug`, and whether that is what must happen."""
    caught = set()
    for build in BUILDS:
        p = run([str(BUILD / f"selftest_{build}"), bug])
        if build == "plain" and p.returncode == 3:
            caught.add("values")
        if build in REPORTS and re.search(REPORTS[build], p.stderr):
            caught.add(build)
        if p.returncode not in (0, 3) and not (build in REPORTS and re.search(REPORTS[build], p.stderr)):
            caught.add(f"{build} exit {p.returncode}")
    expected = SELFTESTS[bug]
    return caught, bool(caught >= expected and (expected or not caught))


def emulated_pytest():
    env = {"MARSOPS_EMULATED_CUDA": "1", "CI": os.environ.get("CI", "true")}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda_emulated",
                        str(ROOT / "tests")], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    tail = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", tail)) else 0
    failed = sum(int(x) for x in re.findall(r"(\d+) (?:failed|error)", tail))
    if (p.returncode != 0 or passed == 0) and failed == 0:
        failed = 1  # a collection error, or a session that selected or ran nothing
    return passed, failed, p.stdout[-6000:] + p.stderr[-3000:] if failed else tail


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-pytest", action="store_true", help="only the C++ checks and self-tests")
    parser.add_argument("--jobs", type=int, default=2, help="parallel builds")
    args = parser.parse_args()
    start = time.time()
    passed = failed = 0

    def stamp(text):
        print(f"[emulate_cuda +{time.time() - start:.0f} s] {text}", flush=True)

    try:
        compile_all(args.jobs)
    except subprocess.CalledProcessError as e:
        print(f"build failed: {' '.join(map(str, e.cmd))}")
        print("emulate_cuda: 0 passed, 1 failed")
        return 1
    stamp("built plain, tsan and asan+ubsan")
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(BUILDS, pool.map(kernel_checks, BUILDS)))
    for build, (p, f, shown) in results.items():
        passed, failed = passed + p, failed + f
        stamp(f"kernel_checks ({build}): {p} passed, {f} failed")
        for line in shown:
            print("  " + line)
    for bug in SELFTESTS:
        caught, ok = selftest(bug)
        passed, failed = passed + ok, failed + (not ok)
        what = ", ".join(sorted(caught)) or "nothing"
        expected = ", ".join(sorted(SELFTESTS[bug])) or "nothing"
        stamp(f"selftest {bug}: caught by {what} (must be: {expected}) {'ok' if ok else 'FAILED'}")
    if not args.skip_pytest:
        p, f, text = emulated_pytest()
        passed, failed = passed + p, failed + f
        stamp(f"pytest with the CUDA ops emulated: {p} passed, {f} failed")
        if f:
            print(text)
    print(f"emulate_cuda: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
