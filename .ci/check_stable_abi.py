"""Fails if a compiled marsops module needs a libtorch symbol outside the stable ABI of torch
2.10 (the target every build must load on): a C++ symbol of c10 / at / torch, or a C shim that
newer torch releases added.

    python .ci/check_stable_abi.py marsops/_C*.so [marsops/_C_cuda*.so]
"""
import re
import subprocess
import sys

# Shims that appeared after torch 2.10 (torch/csrc/stable/c/shim_function_versions.txt); the
# buffer pool reaches torch_from_blob (2.11) only through a run-time lookup, never by linking.
NEWER_THAN_TARGET = {
    "torch_from_blob", "torch_dtype_float8_e8m0fnu", "torch_dtype_float4_e2m1fn_x2", "aoti_torch_dtype_float8_e8m0fnu",
    "aoti_torch_dtype_float4_e2m1fn_x2", "torch_library_def_with_tags", "torch_library_set_python_module",
    "torch_exception_get_what", "torch_exception_get_what_without_backtrace", "torch_new_stable_ivalue",
    "torch_delete_stable_ivalue", "torch_stream_native_handle", "torch_new_generator_handle", "torch_delete_generator",
    "torch_generator_get_device", "torch_has_storage", "torch_tensor_from_pyobject", "torch_tensor_to_pyobject",
}
UNSTABLE_CXX = re.compile(r"_ZN(K)?(3c10|2at|5torch)")


def undefined_symbols(path):
    out = subprocess.run(["nm", "-D", "--undefined-only", path], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()]


def main(paths):
    if not paths:
        sys.exit("usage: check_stable_abi.py MODULE.so [MODULE.so ...]")
    bad = [f"{p}: {s}" for p in paths for s in undefined_symbols(p)
           if s in NEWER_THAN_TARGET or s.startswith("torch_tag_") or UNSTABLE_CXX.match(s)]
    if bad:
        print("symbols outside the torch 2.10 stable ABI:\n  " + "\n  ".join(bad))
        return 1
    print(f"stable ABI ok: {', '.join(paths)} need only torch>=2.10 shims, Sleef, libc/libstdc++/CUDA/CPython")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
