"""Checkpoints written atomically (temp file + rename) and loaded safely (weights_only), with a
clear error for files that are corrupt, not ours, or of another model."""
import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch


def atomic_save(obj, path):
    """torch.save to `path` so that a crash leaves either the old file or the new one, whole."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write(path, write):
    """write(tmp) then a rename onto `path`: a crash leaves the old file or the new one, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # the rename itself survives a power cut once the folder is synced (POSIX; not possible on Windows)
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, holding more than weights, or not fitting the model."""


def load(path, map_location="cpu", required=("model",)):
    """The checkpoint at `path`, which must hold the keys `required`. Only tensors and plain values
    are unpickled (weights_only): anything else is refused, not run."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain values, so it was "
                              "not written by train.py (or was altered); it has not been loaded") from exc
    except Exception as exc:  # noqa: BLE001 - garbage makes the unpickler raise anything (KeyError, EOFError, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt?): {reason}") from exc
    missing = [k for k in required if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a train.py checkpoint (missing {missing})")
    return ckpt


def load_model(net, ckpt, path, what):
    """Loads ckpt['model'] into net; `what` describes the model the run expects."""
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise CheckpointError(f"{path}: its weights do not fit {what} ({first})") from exc


def rng_state():
    """Every random state that affects training, as tensors and plain values (weights_only-safe)."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    # .cpu(): a checkpoint loaded with map_location="cuda" brings these byte tensors to the GPU,
    # and the generators take their state from CPU tensors only.
    torch.set_rng_state(state["torch"].cpu())
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].cpu().numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
