"""Argument checks shared by the public ops, with messages that say what was expected."""
import contextlib
import operator

import numpy as np
import torch

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_tensor(name: str, t, op: str):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"marsops.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def as_int64(name: str, value, op: str) -> int:
    """value as a Python int (numpy and 0-dim integer tensors accepted) that fits in int64."""
    if isinstance(value, bool):
        raise TypeError(f"marsops.{op}: {name} must be an integer, got a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"marsops.{op}: {name} must be an integer, got {type(value).__name__}") from None
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"marsops.{op}: {name} must fit in int64, got {value}")
    return value


def as_float(name: str, value, op: str) -> float:
    """value as a Python float (numpy and 0-dim tensors accepted)."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"marsops.{op}: {name} must be a number, got {type(value).__name__}")
    if isinstance(value, torch.Tensor) and value.requires_grad:
        raise ValueError(f"marsops.{op}: {name} is a constant of the op and gets no gradient; pass a number, not a "
                         "tensor that requires grad")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"marsops.{op}: {name} must be a number, got {type(value).__name__}") from None


def as_bool(name: str, value, op: str) -> bool:
    """value as a bool: True / False (numpy bools too), nothing else (bool("no") is True)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"marsops.{op}: {name} must be True or False, got {value!r}")


def as_classes(classes, num_classes: int, op: str) -> tuple:
    """`classes` (any iterable of ints: a list, a range, a numpy array, a generator, read once) as a
    tuple of distinct ints in [0, num_classes)."""
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise TypeError(f"marsops.{op}: classes must be a sequence of class indices (e.g. [1, 2, 3, 4]), got "
                        f"{classes!r}")
    chosen = tuple(as_int64("classes", c, op) for c in classes)
    if not chosen or not all(0 <= c < num_classes for c in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"marsops.{op}: classes {list(chosen)} must be a non-empty subset of [0, {num_classes}), "
                         "each class once")
    return chosen


def is_class_last(t: torch.Tensor) -> bool:
    """Whether logits (N, C, *spatial) lie in memory as the contiguous (N, *spatial, C): channels_last
    and its relatives, which the kernels read in place (the C++ side: csrc/stable.h)."""
    return t.dim() >= 3 and not t.is_contiguous() and t.movedim(1, -1).is_contiguous()


def check_same_device(op: str, **tensors):
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"marsops.{op}: all tensors must be on one device, got {listing}")


def check_integer(name: str, t: torch.Tensor, op: str):
    if t.dtype not in INTEGER_DTYPES:
        raise TypeError(f"marsops.{op}: {name} must be an integer tensor (uint8/int8/int16/int32/int64), got {t.dtype}")


def check_float(name: str, t: torch.Tensor, op: str):
    if not t.is_floating_point():
        raise TypeError(f"marsops.{op}: {name} must be a floating-point tensor, got {t.dtype}")


def assert_ok(ok: torch.Tensor, op: str, message: str) -> None:
    """Checks a device flag a kernel wrote (nonzero: fine): at once on CPU, as a device-side
    assertion on GPUs (no host synchronisation; a failure ends the CUDA context, as torch's own
    losses do)."""
    if ok.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok):
            raise ValueError(f"marsops.{op}: {message}")
    else:  # a GPU, or a compiled graph (which cannot branch on a value): checked when it runs
        torch._assert_async(ok, f"marsops.{op}: {message}")


def refuse_unsupported_autograd(op: str, *tensors) -> None:
    """The compiled and Triton ops have reverse-mode autograd only: forward-mode AD (jvp, jacfwd)
    and torch.func's differentiating transforms would otherwise see zero or wrong derivatives (a
    torch limitation of custom ops), so they are refused."""
    import torch.autograd.forward_ad as forward_ad

    if torch.compiler.is_compiling():  # dynamo traces plain tensors (and cannot trace these checks)
        return
    for t in tensors:
        if t is None:
            continue
        if torch._C._functorch.is_gradtrackingtensor(t):  # vmap alone is fine: it runs the op per sample
            raise RuntimeError(f"marsops.{op}: torch.func's differentiating transforms (grad, vjp, jvp, jacrev, "
                               "jacfwd) are not supported by the fused kernels; use backend='reference'")
        if forward_ad._current_level >= 0 and forward_ad.unpack_dual(t).tangent is not None:
            raise RuntimeError(f"marsops.{op}: forward-mode AD is not supported by the fused kernels; use "
                               "backend='reference'")


@contextlib.contextmanager
def label_errors_as_value_errors():
    """The compiled CPU kernels report a label outside [0, C) as a RuntimeError (the stable ABI
    carries no exception type); re-raised as the ValueError every other backend raises."""
    try:
        yield
    except RuntimeError as exc:
        message = str(exc)
        if message.startswith("marsops.") and ("outside [0," in message or "outside {0, 1}" in message):
            raise ValueError(message) from None
        raise
