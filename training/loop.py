"""One training epoch, evaluation with the streaming IoU, and prediction (with flip TTA)."""
import torch
import torch.nn.functional as F

import marsops


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf."""


def batches(n, batch_size, generator, shuffle=True, rank=0, world=1):
    """Index batches over n samples; with several processes each takes every world-th batch."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    chunks = list(order.split(batch_size))
    if world > 1:
        chunks = chunks[: len(chunks) // world * world] or chunks[:world]  # equal counts per rank
    return chunks[rank::world]


def autocast(device, enabled):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def train_one_epoch(model, criterion, optimizer, images, masks, batch_size, generator, device, amp=False,
                    rank=0, world=1, progress=None):
    model.train()
    total, count = 0.0, 0
    for idx in batches(len(images), batch_size, generator, rank=rank, world=world):
        x = images[idx].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = masks[idx].to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        loss = criterion(logits.float(), y)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"training loss is {loss.item()} (batch of {len(idx)})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        count += len(idx)
        if progress is not None:
            progress.update(len(idx))
            progress.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model, criterion, images, masks, batch_size, device, num_classes, classes, amp=False, rank=0, world=1,
             backend="auto"):
    """(mean loss, IoUResult, confusion matrix) over the whole set, synced across processes."""
    model.eval()
    metric = marsops.StreamingIoU(num_classes, classes=classes, device=device, backend=backend)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    for idx in batches(len(images), batch_size, None, shuffle=False, rank=rank, world=world):
        x = images[idx].to(device).contiguous(memory_format=torch.channels_last)
        y = masks[idx].to(device)
        with autocast(device, amp):
            logits = model(x).float()
        loss_sum += criterion(logits, y).double() * len(idx)
        count += len(idx)
        metric.update(logits, y)
    if world > 1:
        import torch.distributed as dist

        metric.sync()
        dist.all_reduce(loss_sum)
        dist.all_reduce(count)
    return (loss_sum / count.clamp_min(1)).item(), metric.compute(), metric.matrix.cpu()


@torch.no_grad()
def predict(model, images, batch_size, device, tta=False, amp=False):
    """Class predictions (N, H, W); with tta, the softmax averaged over the four flips."""
    model.eval()
    out = []
    for idx in torch.arange(len(images)).split(batch_size):
        x = images[idx].to(device)
        with autocast(device, amp):
            if tta:
                views, _ = marsops.flip4(x)
                probs = F.softmax(model(views.contiguous(memory_format=torch.channels_last)).float(), dim=1)
                logits = marsops.flip4_merge(probs.contiguous())
            else:
                logits = model(x.contiguous(memory_format=torch.channels_last)).float()
        out.append(logits.argmax(1).to(torch.uint8).cpu())
    return torch.cat(out) if out else torch.zeros(0, *images.shape[-2:], dtype=torch.uint8)
