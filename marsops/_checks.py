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


def as_nonnegative(name: str, value, op: str) -> float:
    """value as a finite float >= 0 (as_float's types)."""
    value = as_float(name, value, op)
    if not 0 <= value < float("inf"):
        raise ValueError(f"marsops.{op}: {name} must be finite and >= 0, got {value}")
    return value


def as_weight_buffer(value) -> torch.Tensor:
    """Class weights a loss module keeps as a buffer: a floating tensor keeps its dtype (a float64
    weight stays exact for float64 logits); anything else (a list) becomes float32."""
    t = torch.as_tensor(value)
    return t if t.is_floating_point() else t.to(torch.float32)


def as_bool(name: str, value, op: str) -> bool:
    """value as a bool: True / False (numpy bools too), nothing else (bool("no") is True)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"marsops.{op}: {name} must be True or False, got {value!r}")


def check_choice(name: str, value, choices: tuple, op: str) -> None:
    """value is one of choices (a mode, a reduction), else a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"marsops.{op}: {name} must be one of {choices}, got {value!r}")


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


def check_logits_and_target(op: str, logits: torch.Tensor, target: torch.Tensor) -> int:
    """Float logits ``(N, C, *spatial)`` and an integer target ``(N, *spatial)``, else a clear error; returns C."""
    check_tensor("logits", logits, op)
    check_tensor("target", target, op)
    check_float("logits", logits, op)
    check_integer("target", target, op)
    if logits.dim() < 2 or logits.shape[1] < 1:
        raise ValueError(f"marsops.{op}: logits must be (N, C, *spatial) with C >= 1, got shape {tuple(logits.shape)}")
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"marsops.{op}: target shape {tuple(target.shape)} does not match logits shape "
                         f"{tuple(logits.shape)}; expected {expected}")
    return logits.shape[1]


def assert_ok(ok: torch.Tensor, op: str, message: str) -> None:
    """Checks a device flag a kernel wrote (nonzero: fine): at once on CPU, as a device-side
    assertion on GPUs (no host synchronisation; a failure ends the CUDA context, as torch's own
    losses do)."""
    if ok.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(unbatched(ok).all()):
            raise ValueError(f"marsops.{op}: {message}")
    else:  # a GPU, or a compiled graph (which cannot branch on a value): checked when it runs
        torch._assert_async(ok, f"marsops.{op}: {message}")


def unbatched(t: torch.Tensor) -> torch.Tensor:
    """t itself, or under torch.func transforms the tensor their wrappers hold, with each vmap
    level's batch dimension moved to the front: what a check of every sample's values reads at
    once (a check on a BatchedTensor would be data-dependent control flow, which vmap refuses;
    vmap(grad(...)) wraps it once more)."""
    from torch._C import _functorch

    if torch.compiler.is_compiling():  # dynamo traces plain tensors (and cannot trace these checks)
        return t
    while True:
        if _functorch.is_batchedtensor(t):
            bdim = _functorch.maybe_get_bdim(t)
            t = _functorch.get_unwrapped(t).movedim(bdim, 0)
        elif _functorch.is_gradtrackingtensor(t):
            t = _functorch.get_unwrapped(t)
        else:
            return t


def refuse_vmap(op: str, what: str, *tensors) -> None:
    """Counting into a tensor in place (a confusion matrix, a metric's state) cannot run under
    torch.func.vmap, which would need one result per sample: a clear error instead of vmap's."""
    from torch._C import _functorch

    if not torch.compiler.is_compiling() and any(t is not None and _functorch.is_batchedtensor(t) for t in tensors):
        raise RuntimeError(f"marsops.{op}: {what} counts into a tensor in place, which torch.func.vmap cannot do per "
                           "sample; count outside vmap (e.g. marsops.confusion_matrix of the whole batch), or vmap "
                           "only what returns a result per sample (the losses, confusion_matrix)")


def wants_grad(logits: torch.Tensor) -> bool:
    """Whether backward may ask for the gradient of `logits`: the fused forwards compute it only
    then. Under torch.func.vmap the op sees a BatchedTensor, which never requires grad itself:
    what counts is the tensor it wraps (vmap then runs the op once per sample, each call with its
    own autograd node, so the gradients are those of a loop over the batch)."""
    return unbatched(logits).requires_grad and torch.is_grad_enabled()


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
