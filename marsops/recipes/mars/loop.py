"""One training epoch, evaluation with the streaming IoU, and prediction (with flip TTA).

The training step never waits for the host: the loss is summed on the device, its finiteness is
a device flag read every `check_every` steps (and before the epoch ends, so no NaN reaches a
checkpoint), the batch order lives on the device, and the focal loss counts the training
confusion matrix in the same pass as the loss and its gradient."""
import torch

import marsops


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf."""


def batches(n, batch_size, generator, shuffle=True, rank=0, world=1, device="cpu"):
    """Training batches over n samples, on `device`. With several processes each takes every
    world-th batch, and every process gets the same number (DDP's collectives must pair up):
    the last incomplete round is dropped, and with fewer batches than processes the samples are
    split into one batch per process."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(device)  # one copy per epoch, then views
    if world > 1 and n < world:
        raise ValueError(f"{n} training samples cannot be shared by {world} processes")
    chunks = list(order.split(batch_size))
    if world > 1:
        chunks = chunks[: len(chunks) // world * world] or list(order.tensor_split(world))
    return chunks[rank::world]


def shard(n, batch_size, rank=0, world=1):
    """Evaluation batches: each sample in exactly one batch of exactly one process (the counts are
    summed across processes afterwards, so the processes need not pair up)."""
    return list(torch.arange(n).tensor_split(world)[rank].split(batch_size))


def autocast(device, enabled):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def make_step(model, criterion, optimizer, device, amp=False, metric=None):
    """step(x, y) -> loss: forward, the loss (counting `metric`'s confusion matrix in the same
    pass), backward and the optimizer step."""

    def step(x, y):
        with autocast(device, amp):
            logits = model(x)
        loss = criterion(logits.float(), y, confusion=metric)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


class CudaGraphStep:
    """A training step captured as one CUDA graph for a fixed batch shape, then replayed: no
    launch overhead, no host involvement. CUDA graphs need a few real steps before the capture;
    they run on the first batch, and the model's weights and buffers, the optimizer's state and
    the RNG are put back afterwards, so training (and a resumed run) is as if they never ran. The
    optimizer must be capturable."""

    def __init__(self, step, model, optimizer, x, y, warmup=3):
        self.static_x, self.static_y = x.clone(), y.clone()
        tensors = list(model.parameters()) + list(model.buffers())
        saved = [t.detach().clone() for t in tensors]
        saved_state = {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                       for p, s in optimizer.state.items()}
        rng = torch.cuda.get_rng_state()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step(self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = step(self.static_x, self.static_y)
        with torch.no_grad():  # in place: the graph holds these very tensors
            for t, s in zip(tensors, saved):
                t.copy_(s)
            for p, state in optimizer.state.items():
                for k, v in state.items():
                    if not torch.is_tensor(v):
                        continue
                    if p in saved_state:
                        v.copy_(saved_state[p][k])
                    else:  # created by the warm-up: back to a fresh optimizer's zeros
                        v.zero_()
        torch.cuda.set_rng_state(rng)

    def __call__(self, x, y):
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss


def train_one_epoch(model, step, images, masks, batch_size, generator, device, rank=0, world=1, progress=None,
                    check_every=50, graphed=None):
    """Runs step(x, y) (make_step's, for `model`) over one shuffled epoch; returns the mean
    training loss. `graphed(x, y)`, if given, replaces step for full batches (CUDA graphs need one
    batch shape). Under torch.distributed every process checks the same, all-reduced flag, so
    they stop together."""
    model.train()
    total = torch.zeros((), device=device, dtype=torch.float64)
    finite = torch.ones((), device=device, dtype=torch.bool)
    count = 0

    def check():  # the one host synchronisation, every check_every steps
        if world > 1:
            import torch.distributed as dist

            everywhere = finite.to(torch.int32)
            dist.all_reduce(everywhere, op=dist.ReduceOp.MIN)
            finite.copy_(everywhere.bool())
        if not bool(finite):
            raise NonFiniteLoss(f"training loss is {(total / max(count, 1)).item()} (non-finite within the last "
                                f"{check_every} steps)")
        if progress is not None:
            progress.set_postfix(loss=f"{(total / count).item():.4f}")

    for i, idx in enumerate(batches(len(images), batch_size, generator, rank=rank, world=world,
                                    device=images.device)):
        x = images[idx].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = masks[idx].to(device, non_blocking=True)
        loss = graphed(x, y) if graphed is not None and len(idx) == batch_size else step(x, y)
        total += loss.double() * len(idx)
        finite &= torch.isfinite(loss)
        count += len(idx)
        if progress is not None:
            progress.update(len(idx))
        if (i + 1) % check_every == 0:
            check()
    if count:
        check()
    return (total / max(count, 1)).item()


@torch.no_grad()
def evaluate(model, criterion, images, masks, batch_size, device, num_classes, classes, amp=False, rank=0, world=1,
             backend="auto", tta=False):
    """(mean loss, IoUResult, confusion matrix) over the whole set, synced across processes. The
    focal loss counts the confusion matrix in its own pass; with tta the metric counts the flip
    test-time-augmented predictions (one fused pass over the four views) and the loss is the
    un-augmented view's."""
    model.eval()
    metric = marsops.StreamingIoU(num_classes, classes=classes, device=device, backend=backend)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    for idx in shard(len(images), batch_size, rank, world):
        x = images[idx].to(device)
        y = masks[idx].to(device)
        with autocast(device, amp):
            if tta:
                views = model(marsops.flip4(x, backend=backend)[0].contiguous(memory_format=torch.channels_last))
                logits = views[: len(idx)].float()
            else:
                logits = model(x.contiguous(memory_format=torch.channels_last)).float()
        if tta:
            loss_sum += criterion(logits, y).double() * len(idx)
            metric.update_flip4(views.float(), y)
        else:
            loss_sum += criterion(logits, y, confusion=metric).double() * len(idx)
        count += len(idx)
    if world > 1:
        import torch.distributed as dist

        metric.sync()
        dist.all_reduce(loss_sum)
        dist.all_reduce(count)
    return (loss_sum / count.clamp_min(1)).item(), metric.compute(), metric.matrix.cpu()


@torch.no_grad()
def predict(model, images, batch_size, device, tta=False, amp=False, backend="auto"):
    """Class predictions (N, H, W); with tta, the softmax averaged over the four flips (one fused
    pass: marsops.flip4_argmax)."""
    model.eval()
    out = []
    for idx in torch.arange(len(images)).split(batch_size):
        x = images[idx].to(device)
        with autocast(device, amp):
            if tta:
                views, _ = marsops.flip4(x, backend=backend)
                pred = marsops.flip4_argmax(model(views.contiguous(memory_format=torch.channels_last)).float(),
                                            backend=backend)
            else:
                pred = model(x.contiguous(memory_format=torch.channels_last)).float().argmax(1)
        out.append(pred.to(torch.uint8).cpu())
    return torch.cat(out) if out else torch.zeros(0, *images.shape[-2:], dtype=torch.uint8)

