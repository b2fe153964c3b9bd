"""Argument checks shared by the public ops, with messages that say what was expected."""
import torch

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_tensor(name: str, t, op: str):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"marsops.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def check_same_device(op: str, **tensors):
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"marsops.{op}: all tensors must be on one device, got {listing}")


def check_integer(name: str, t: torch.Tensor, op: str):
    if t.dtype not in INTEGER_DTYPES:
        raise TypeError(f"marsops.{op}: {name} must be an integer tensor (uint8/int32/int64), got {t.dtype}")


def check_float(name: str, t: torch.Tensor, op: str):
    if not t.is_floating_point():
        raise TypeError(f"marsops.{op}: {name} must be a floating-point tensor, got {t.dtype}")


def async_raise_if(op: str, message: str):
    """A check on a device flag: immediate on CPU, a device-side assertion on GPUs (no sync)."""

    def raise_if(flag: torch.Tensor):
        if flag.device.type == "cpu":
            if bool(flag):
                raise ValueError(f"marsops.{op}: {message}")
        else:
            torch._assert_async(~flag, f"marsops.{op}: {message}")

    return raise_if
