"""The autograd of the fused losses, whose forward pass already wrote d(loss)/d(logits): backward
hands that saved buffer out, scaled by the upstream gradient (marsops.focal_loss, the region
losses, the sigmoid focal loss)."""
import torch
from torch import Tensor

from . import triton as _triton


def saved_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the gradient a fused forward saves (csrc/saved_grad.h): fp32 for fp16 logits,
    whose per-pixel gradients of a mean over many pixels fall below fp16's normal range before the
    upstream gradient (a mixed-precision loss scale) is applied; autograd casts the result back."""
    return torch.float32 if dtype == torch.float16 else dtype


def is_plain_cpu_one(t: Tensor) -> bool:
    """t is a real (not fake/traced) CPU scalar equal to 1, so reading it costs no sync or graph break."""
    return type(t) is torch.Tensor and t.device.type == "cpu" and t.numel() == 1 and t.item() == 1.0


def graph_is_kept() -> bool:
    """Whether the running backward keeps the graph (retain_graph=True): the saved gradient may be
    read again, so it must not be handed out or scaled in place."""
    keep = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep is None else keep()


def check_backward(op: str, has_grad: bool) -> None:
    """What every fused backward checks first: no double backward, and a forward that wrote the gradient."""
    refuse_double_backward(op)
    if not has_grad:
        raise RuntimeError(f"marsops.{op}: the forward ran without gradient (logits did not require grad or grad "
                           "mode was off), so there is nothing to backpropagate to the logits")


def masked_upstream(grad_loss: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """A per-element upstream gradient with ignored elements' values replaced by 0: a NaN or inf
    there must not reach the gradient (0 * inf is NaN; an ignored element's gradient is 0)."""
    kept = target.to(torch.int64) != ignore_index
    return torch.where(kept, grad_loss, torch.zeros((), dtype=grad_loss.dtype, device=grad_loss.device))


def register(op: str, fake, backward, setup_context) -> None:
    """Registers a fused loss op's fake kernel and autograd formula."""
    torch.library.register_fake(op)(fake)
    torch.library.register_autograd(op, backward, setup_context=setup_context)


def refuse_double_backward(op: str) -> None:
    if torch.is_grad_enabled():
        raise RuntimeError(f"marsops.{op}: double backward (create_graph=True) is not supported by the fused "
                           "kernels: their gradient is not itself differentiable. Use backend='reference' for "
                           "higher-order gradients.")


def scaled(grad: Tensor, grad_loss: Tensor, scale: Tensor) -> Tensor:
    """The saved gradient times the upstream gradient (`scale`, broadcastable to it): the buffer
    itself, scaled in place, when nothing can read it again (no copy, no second logits-sized
    tensor); a fresh tensor when the graph is kept or traced. loss.backward() on CPU needs no
    scaling at all; on GPUs a one-element upstream gradient is applied by a kernel that skips
    the pass when it is 1."""
    traced = torch.compiler.is_compiling() or type(grad) is not torch.Tensor  # fake / functional tensors
    if traced or graph_is_kept():
        return grad * scale
    if is_plain_cpu_one(grad_loss):
        return grad
    if grad.is_cuda and grad_loss.numel() == 1 and grad.is_contiguous() and _triton.IMPORT_ERROR is None:
        from .triton.scale import scale_

        with _triton.on_device_of(grad):
            return scale_(grad, grad_loss)
    return grad.mul_(scale)
