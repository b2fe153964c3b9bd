"""Train, evaluate and predict with the report's recipe on marsops.

    python train.py                          # the CPU preset on the built-in synthetic data (< 10 min)
    python train.py --preset report          # the report's full-length schedule (for a GPU)
    python train.py --data mars_for_students.npz
    python train.py --resume runs/NAME       # continue a killed run exactly
    python train.py --predict runs/NAME --tta
    torchrun --nproc_per_node=2 train.py     # DistributedDataParallel (gloo on CPU, nccl on GPU)
    python train.py --tune 20 --storage sqlite:///study.db
"""
import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import marsops
from marsops import models
from marsops import backend as _backend, data
from marsops.recipes.mars import checkpoint, loop, plots
from marsops.recipes.mars import losses as loss_table
from marsops.recipes.mars.losses import LOSSES

NUM_CLASSES = data.NUM_CLASSES
SCORED_CLASSES = [1, 2, 3, 4]  # the leaderboard's mean IoU ignores background
IOU_COLUMNS = [f"iou_{n.replace(' ', '_')}" for n in data.CLASS_NAMES[1:]]

PRESETS = {
    # Fits in 10 minutes on a 2-core CPU: a narrow model, a smaller synthetic set, 15 epochs.
    "cpu": dict(width=8, synthetic_train=800, epochs=15, lr_patience=3, early_stop=6),
    # The report: the full data, width 32, ReduceLROnPlateau patience 25, early stopping.
    "report": dict(width=32, synthetic_train=2615, epochs=500, lr_patience=25, early_stop=50),
}
# What a call may set besides --resume / --predict; everything else comes from the run's config.json.
RESUME_OPTIONS = {"epochs", "no_progress", "device", "threads", "backend", "deterministic", "cuda_graph",
                  "check_every"}
PREDICT_OPTIONS = {"data", "tta", "batch_size", "device", "threads", "backend", "amp", "no_progress"}


def get_args_parser():
    p = argparse.ArgumentParser(description="Mars terrain segmentation: the report's recipe on marsops",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="defaults for the options below")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="course npz or PNG folder (default: the built-in synthetic set)")
    g.add_argument("--synthetic-train", type=int, help="synthetic training images (before cleaning)")
    g.add_argument("--synthetic-test", type=int, default=200)
    g.add_argument("--cache", default="data", help="folder for the generated synthetic npz")
    g.add_argument("--min-repeats", type=int, default=2,
                   help="a mask (of 2+ classes) shared by this many different images marks them all as outliers")
    g.add_argument("--val-fraction", type=float, default=0.2)
    g.add_argument("--no-flips", action="store_true", help="train without the four-way flip expansion")
    g = p.add_argument_group("model and loss")
    g.add_argument("--model", choices=sorted(models.MODELS), default="multipath_unet")
    g.add_argument("--width", type=int)
    g.add_argument("--paths", default=",".join(models.PATHS), help="Multipath UNet bottleneck paths")
    g.add_argument("--loss", choices=list(LOSSES), default="focal",
                   help="the training loss (marsops.recipes.mars.losses); the class weights go to each loss's "
                        "pixel term (focal, ce, ohem_focal) and, with --region-weights recipe, to the weighted mean "
                        "of a region loss's per-class scores")
    g.add_argument("--gamma", type=float, default=0.5, help="focusing parameter of focal, dice_focal, ohem_focal")
    g.add_argument("--background-weight", type=float, default=0.0,
                   help="class 0's weight; the others are inverse pixel frequencies")
    g.add_argument("--region-weights", choices=("recipe", "uniform"), default="recipe",
                   help="dice, jaccard, tversky, dice_focal, dice_ce: the per-class scores' weights are the "
                        "recipe's class weights, or all 1 (background scored too)")
    g.add_argument("--dice-smooth", type=float,
                   help="smooth term of the region losses (default: each loss's own, 1 for dice-type, 1e-5 for "
                        "generalized_dice)")
    g.add_argument("--tversky-alpha", type=float, default=0.3, help="tversky: weight of false positives")
    g.add_argument("--tversky-beta", type=float, default=0.7, help="tversky: weight of false negatives")
    g.add_argument("--gdl-weight-type", choices=("square", "simple", "uniform"), default="square",
                   help="generalized_dice: class weights 1/T^2, 1/T or 1 (T: the class's pixels in the batch)")
    g.add_argument("--ohem-thresh", type=float, default=0.7,
                   help="ohem_focal: keep pixels whose target probability is below this")
    g.add_argument("--ohem-min-kept", type=int, default=100_000, help="ohem_focal: keep at least this many pixels")
    g.add_argument("--lovasz-per-image", action="store_true", help="lovasz: average per-image losses")
    g.add_argument("--backend", default="auto", choices=("auto",) + _backend.BACKENDS, help="marsops backend")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=1e-3)
    g.add_argument("--lr-patience", type=int, help="ReduceLROnPlateau patience (epochs)")
    g.add_argument("--lr-factor", type=float, default=0.5)
    g.add_argument("--early-stop", type=int, help="stop after this many epochs without a better val mIoU")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs", help="parent folder of the run folders")
    g.add_argument("--name", help="run folder name (default: a timestamp)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    g.add_argument("--cuda-graph", action="store_true",
                   help="capture the training step as one CUDA graph and replay it (GPU; full batches)")
    g.add_argument("--check-every", type=int, default=50,
                   help="read the device's non-finite-loss flag every this many steps (the step never syncs)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g.add_argument("--deterministic", action="store_true",
                   help="bitwise-reproducible GPU runs (deterministic cuDNN / cuBLAS; slower)")
    g.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("other modes")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from last.pt")
    g.add_argument("--predict", metavar="RUN_DIR", help="predict the test set with RUN_DIR/best.pt")
    g.add_argument("--tta", action="store_true",
                   help="flip test-time augmentation: of --predict's predictions, and of the validation score")
    g.add_argument("--tune", type=int, metavar="N", help="Optuna search of N trials")
    g.add_argument("--storage", help="Optuna storage URL shared by several machines (e.g. sqlite:///s.db)")
    g.add_argument("--study-name", default="marsops")
    return p


def parse_args(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    errors = check_args(args)
    if errors:
        parser.error("; ".join(errors))
    return args


def check_args(args):
    """What is wrong with the options, one message each (NaN fails every range check)."""
    errors = []
    if args.batch_size < 4 or (not args.no_flips and args.batch_size % 4):
        errors.append("--batch-size must be a multiple of 4 (flip4 groups) and at least 4")
    if not 0 < args.val_fraction < 1:
        errors.append("--val-fraction must be in (0, 1): the validation set picks the best checkpoint")
    if not (0 < args.lr < math.inf) or args.epochs < 1 or args.width < 1:
        errors.append("--lr, --epochs and --width must be positive (and --lr finite)")
    for flag, value in (("--gamma", args.gamma), ("--weight-decay", args.weight_decay),
                        ("--background-weight", args.background_weight), ("--tversky-alpha", args.tversky_alpha),
                        ("--tversky-beta", args.tversky_beta),
                        ("--dice-smooth", 0.0 if args.dice_smooth is None else args.dice_smooth)):
        if not 0 <= value < math.inf:
            errors.append(f"{flag} must be a finite number >= 0")
    if not args.tversky_alpha + args.tversky_beta > 0:
        errors.append("--tversky-alpha and --tversky-beta must not both be 0")
    if not 0 <= args.ohem_thresh <= 1:
        errors.append("--ohem-thresh must be in [0, 1] (a probability)")
    if args.ohem_min_kept < 0:
        errors.append("--ohem-min-kept must be >= 0")
    if not loss_table.available(args.loss):
        errors.append(f"--loss {args.loss} needs marsops.{LOSSES[args.loss].function}, which this marsops lacks")
    if not 0 < args.lr_factor < 1:
        errors.append("--lr-factor must be in (0, 1): ReduceLROnPlateau multiplies the learning rate by it")
    if args.lr_patience < 0 or args.early_stop < 1:
        errors.append("--lr-patience must be >= 0 and --early-stop >= 1")
    if args.min_repeats < 2:
        errors.append("--min-repeats must be >= 2 (a mask shared by that many different images marks outliers)")
    if args.synthetic_train < 1 or args.synthetic_test < 0:
        errors.append("--synthetic-train must be >= 1 and --synthetic-test >= 0")
    if args.threads is not None and args.threads < 1:
        errors.append("--threads must be >= 1")
    try:
        device = torch.device(args.device)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        errors.append(f"--device {args.device!r}: train.py runs on cpu, cuda or cuda:<index>")
    elif args.backend != "auto":
        reason = _backend.unavailable_reason(args.backend, "focal_loss_forward", device.type)
        if reason:
            errors.append(f"--backend {args.backend} cannot run on --device {args.device}: {reason}")
    if not 0 <= args.seed < 2**32:
        errors.append("--seed must be in [0, 2^32)")
    if args.cuda_graph and not args.device.startswith("cuda"):
        errors.append("--cuda-graph needs --device cuda")
    if args.check_every < 1:
        errors.append("--check-every must be >= 1")
    bad_paths = set(args.paths.split(",")) - set(models.PATHS)
    if bad_paths:
        errors.append(f"--paths: unknown {sorted(bad_paths)}; choose from {models.PATHS}")
    for flag, folder in (("--out", args.out), ("--cache", args.cache)):
        existing = next(p for p in (Path(folder), *Path(folder).absolute().parents) if p.exists())
        if not existing.is_dir():
            errors.append(f"{flag} {folder}: {existing} is a file, not a folder")
    if sum(bool(m) for m in (args.predict, args.resume, args.tune is not None)) > 1:
        errors.append("--predict, --resume and --tune are separate modes: give one")
    if args.tune is not None and args.tune < 1:
        errors.append("--tune needs N >= 1 trials")
    if args.storage and args.tune is None:
        errors.append("--storage is the Optuna storage of --tune")
    return errors


def given_options(argv):
    """The options (dest names) that argv sets itself, not through a default or a preset."""
    probe, unset = get_args_parser(), object()
    probe.set_defaults(**{k: unset for k in vars(probe.parse_args([]))})
    return {k for k, v in vars(probe.parse_args(argv)).items() if v is not unset}


def saved_run(run_dir, given, allowed, mode):
    """The options run_dir/config.json saved, after refusing options given that `mode` cannot change."""
    fixed = sorted(given - allowed - {mode})
    if fixed:
        flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
        raise checkpoint.CheckpointError(
            f"--{mode} uses the configuration {run_dir} was trained with, so {flags} cannot be given; what can: "
            + ", ".join("--" + k.replace("_", "-") for k in sorted(allowed)))
    path = Path(run_dir) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise checkpoint.CheckpointError(f"{path}: not a readable run configuration ({exc})") from exc
    if not isinstance(saved, dict):
        raise checkpoint.CheckpointError(f"{path}: not a run configuration (expected a JSON object)")
    for action in get_args_parser()._actions:  # what argparse would have checked, had it parsed these
        if action.dest in saved and not fits(action, saved[action.dest]):
            raise checkpoint.CheckpointError(f"{path}: {action.dest} = {saved[action.dest]!r} is not a valid "
                                             f"--{action.dest.replace('_', '-')}")
    return saved


def fits(action, value):
    """Whether a saved value is one the option's parser could have produced."""
    if value is None:  # an option left unset; the preset's ones never are once parsed
        return action.default is None and action.dest not in PRESETS["cpu"]
    if action.nargs == 0:  # store_true
        return isinstance(value, bool)
    kind = action.type or str
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else \
        isinstance(value, kind) and not isinstance(value, bool)
    return ok and (action.choices is None or value in action.choices)


# ---- setup ------------------------------------------------------------------------------------

def distributed(device_type):
    """(rank, world size), initialising torch.distributed under torchrun. NCCL needs a GPU of its
    own per process; CPU training, or several processes sharing a GPU, use gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        own_gpus = device_type == "cuda" and torch.cuda.device_count() >= local_world
        dist.init_process_group("nccl" if own_gpus else "gloo")
    return dist.get_rank(), world


def make_deterministic():
    """Bitwise-reproducible runs on GPUs too (cuDNN's deterministic algorithms, cuBLAS's fixed
    workspace); torch warns about any op left without a deterministic version."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def device_for(args, rank):
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            sys.exit("error: --device cuda but no GPU is visible")
        index = torch.device(args.device).index
        if index is not None and index >= torch.cuda.device_count():
            sys.exit(f"error: --device {args.device} but only {torch.cuda.device_count()} GPU(s) are visible")
        if index is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return torch.device("cuda", index)
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device(args.device)


def dataset_path(args, rank, world):
    if args.data:
        return Path(args.data)
    path = Path(args.cache) / f"synthetic_n{args.synthetic_train}_t{args.synthetic_test}_seed{args.seed}.npz"
    if rank == 0 and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        data.write_npz(tmp, args.synthetic_train, args.synthetic_test, args.seed)
        os.replace(tmp, path)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return path


def load_data(args, rank=0, world=1):
    """The data set, refused here when the model cannot take its image size."""
    path = dataset_path(args, rank, world)
    d = data.load(path, mask_dtype=torch.uint8)
    divisor = models.MODELS[args.model].SIZE_DIVISOR
    h, w = d.images.shape[-2:]
    if h % divisor or w % divisor:
        raise data.DataError(f"{path}: the images are {h}x{w}; the {args.model} model needs a height and width "
                             f"divisible by {divisor} (crop or pad the data)")
    return d


def prepare_data(args, device, rank, world, log):
    """Load, clean, split (before any augmentation), weights, and the flip4 expansion on device."""
    d = load_data(args, rank, world)
    report = data.find_outliers(d.images, d.masks, min_repeats=args.min_repeats)
    log(f"data: {len(d.images)} images; {report.summary()}")
    train_idx, val_idx = data.split_indices(len(report.kept), args.val_fraction, args.seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise data.DataError(f"{len(report.kept)} of {len(d.images)} images remain after outlier cleaning: too few "
                             f"for both a training and a validation set (--val-fraction {args.val_fraction} gives "
                             f"{len(train_idx)} and {len(val_idx)})")
    train_idx, val_idx = report.kept[train_idx], report.kept[val_idx]
    weights = data.inverse_frequency_weights(d.masks[train_idx], NUM_CLASSES, args.background_weight)
    log(f"split: {len(train_idx)} train / {len(val_idx)} validation; class weights {weights.tolist()}")
    train_x, train_y = d.images[train_idx].to(device), d.masks[train_idx].to(device)
    if not args.no_flips:
        train_x, train_y = marsops.flip4(train_x, train_y, backend=args.backend)  # the report's 4x expansion
    return dict(train=(train_x, train_y), val=(d.images[val_idx], d.masks[val_idx]), test=d.test_images,
                weights=weights.to(device))


def build(args, device, weights):
    net = models.build_model(args.model, in_channels=1, num_classes=NUM_CLASSES, width=args.width,
                             **({"paths": tuple(args.paths.split(","))} if args.model == "multipath_unet" else {}))
    net = net.to(device, memory_format=torch.channels_last)
    criterion = loss_table.build(args, weights)
    if args.cuda_graph:  # replayed graphs read the learning rate from a tensor the scheduler updates
        optimizer = torch.optim.AdamW(net.parameters(), lr=torch.tensor(args.lr, device=device),
                                      weight_decay=args.weight_decay, capturable=True)
    else:
        optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=args.lr_factor,
                                                           patience=args.lr_patience)
    return net, criterion, optimizer, scheduler


# ---- training ---------------------------------------------------------------------------------

def better(miou, best):
    """Whether a validation mIoU beats the best so far; NaN (no scored class in the validation
    labels or the predictions) ranks below every number."""
    return not math.isnan(miou) and (math.isnan(best) or miou > best)


def trim_metrics(path, epoch):
    """Drops metrics.csv rows after `epoch` (a kill between a row's append and its checkpoint's
    save leaves one, which the resumed run writes again); returns the header, None if empty."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return None
    kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= epoch]
    if len(kept) != len(rows):
        def write(tmp):
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(kept)

        checkpoint.atomic_write(path, write)
    return rows[0]


def new_run_dir(out, name=None, base=None):
    """The folder of a new run, created: out/name, which must not hold a run (a checkpoint) yet;
    or out/<base or a timestamp>[-k], a folder made here (no other run can take it too)."""
    if name:
        path = Path(out) / name
        if (path / "last.pt").exists():
            raise checkpoint.CheckpointError(f"{path} already holds a run: continue it with --resume {path}, or "
                                             "choose another --name")
        path.mkdir(parents=True, exist_ok=True)  # a run that died before its first checkpoint starts over
        return path
    base = base or time.strftime("%Y%m%d-%H%M%S")
    Path(out).mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        path = Path(out) / (base if k == 1 else f"{base}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise checkpoint.CheckpointError(f"{out}: no free run folder named {base}-k")


def train(args, log=print, run_base=None):
    """Runs (or resumes) training; returns the best validation mIoU. run_base: the new run's
    folder name when args.name is not given, suffixed -k if taken."""
    if args.deterministic:
        make_deterministic()
    rank, world = distributed(torch.device(args.device).type)
    device = device_for(args, rank)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed + rank)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "last.pt").exists() and (run_dir / "config.json").exists():
            raise checkpoint.CheckpointError(f"{run_dir} has no checkpoint: it stopped during its first epoch; start "
                                             f"it again (train.py --name {run_dir.name} --out {run_dir.parent} ...)")
    elif rank == 0:
        run_dir = new_run_dir(args.out, args.name, run_base)
    else:  # only rank 0 writes the run's files
        run_dir = Path(args.out) / (args.name or run_base or "rank0-names-it")
    log = log if rank == 0 else (lambda *a, **k: None)
    try:
        d = prepare_data(args, device, rank, world, log)
        net, criterion, optimizer, scheduler = build(args, device, d["weights"])
    except BaseException:
        if rank == 0 and not args.resume and not any(run_dir.iterdir()):
            run_dir.rmdir()  # no half-made run folders
        raise
    if rank == 0 and not args.resume:
        config = json.dumps(vars(args), indent=2) + "\n"
        checkpoint.atomic_write(run_dir / "config.json", lambda tmp: tmp.write_text(config))
    state = dict(epoch=0, best_miou=float("-inf"), best_epoch=0)
    if args.resume:
        last = run_dir / "last.pt"
        ckpt = checkpoint.load(last, map_location=device, required=("model", "optimizer", "scheduler", "state", "rng"))
        checkpoint.load_model(net, ckpt, last, f"this run's {args.model} of width {args.width}")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state.update(ckpt["state"])
        checkpoint.set_rng_state(ckpt["rng"])
    train_net = net
    if world > 1:
        train_net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.index is not None
                                                              else None)
    if args.compile:
        train_net = torch.compile(train_net)
    metrics_csv = run_dir / "metrics.csv"
    columns = ["epoch", "train_loss", "train_miou", "val_loss", "val_miou", *IOU_COLUMNS, "pixel_accuracy", "lr",
               "seconds"]
    if rank == 0 and args.resume and metrics_csv.exists():  # a run resumed keeps the columns it started with
        columns = trim_metrics(metrics_csv, state["epoch"]) or columns
    if rank == 0 and (not args.resume or not metrics_csv.exists() or metrics_csv.stat().st_size == 0):
        with open(metrics_csv, "w", newline="") as f:
            csv.writer(f).writerow(columns)
    train_x, train_y = d["train"]
    val_x, val_y = d["val"]
    # The training mIoU comes from the loss's own pass over the logits (focal_loss(confusion=...)).
    train_metric = marsops.StreamingIoU(NUM_CLASSES, classes=SCORED_CLASSES, device=device, backend=args.backend)
    step = loop.make_step(train_net, criterion, optimizer, device, args.amp, train_metric)
    graphed = None
    if args.cuda_graph and len(train_x) >= args.batch_size:
        graphed = loop.CudaGraphStep(step, train_net, optimizer,
                                     train_x[: args.batch_size].contiguous(memory_format=torch.channels_last),
                                     train_y[: args.batch_size])
        train_metric.reset()
    if args.resume:
        resumed_from(train_metric, ckpt, run_dir / "last.pt", rank)
        log(f"resumed {run_dir} after epoch {state['epoch']} (best mIoU {state['best_miou']:.4f}"
            + (f", train mIoU {train_metric.compute().miou.item():.4f})" if "train_metric" in ckpt else ")"))
    progress = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=(args.epochs - state["epoch"]) * len(train_x), unit="img", dynamic_ncols=True)
    try:
        while state["epoch"] < args.epochs:
            if state["epoch"] and state["epoch"] - state["best_epoch"] >= args.early_stop:  # resumed ones too
                log(f"early stop: no better validation mIoU for {args.early_stop} epochs")
                break
            epoch = state["epoch"] + 1
            t0 = time.perf_counter()
            shuffle = torch.Generator().manual_seed(args.seed * 100_003 + epoch)  # same order on every rank
            if progress is not None:
                progress.set_description(f"epoch {epoch}/{args.epochs}")
            train_metric.reset()
            try:
                train_loss = loop.train_one_epoch(train_net, step, train_x, train_y, args.batch_size, shuffle, device,
                                                  rank, world, progress, args.check_every, graphed)
            except loop.NonFiniteLoss as exc:
                kept = (f"The last good checkpoint is {run_dir / 'last.pt'} (epoch {state['epoch']})" if state["epoch"]
                        else "No checkpoint was written (the first epoch diverged)")
                log(f"error: {exc} in epoch {epoch}; stopping. {kept}; try a lower --lr.")
                raise SystemExit(1)
            if world > 1:
                train_metric.sync()
            train_miou = train_metric.compute().miou.item()
            val_loss, scores, matrix = loop.evaluate(net, criterion, val_x, val_y, args.batch_size, device,
                                                     NUM_CLASSES, SCORED_CLASSES, args.amp, rank, world, args.backend,
                                                     tta=args.tta)
            miou = scores.miou.item()
            scheduler.step(miou)
            state["epoch"] = epoch
            improved = state["best_epoch"] == 0 or better(miou, state["best_miou"])  # the first epoch always
            if improved:
                state.update(best_miou=miou, best_epoch=epoch)
            row = dict(epoch=epoch, train_loss=f"{train_loss:.6f}", train_miou=f"{train_miou:.6f}",
                       val_loss=f"{val_loss:.6f}", val_miou=f"{miou:.6f}",
                       **{c: f"{v:.6f}" for c, v in zip(IOU_COLUMNS, scores.iou[1:].tolist())},
                       pixel_accuracy=f"{scores.pixel_accuracy.item():.6f}",
                       lr=f"{float(optimizer.param_groups[0]['lr']):.3g}", seconds=f"{time.perf_counter() - t0:.1f}")
            if rank == 0:
                with open(metrics_csv, "a", newline="") as f:
                    csv.DictWriter(f, columns, extrasaction="ignore").writerow(row)
                ckpt = dict(model=net.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            state=dict(state), rng=checkpoint.rng_state(), matrix=matrix,
                            train_metric=metric_state(train_metric, world))
                if improved:
                    checkpoint.atomic_save(ckpt, run_dir / "best.pt")
                checkpoint.atomic_save(ckpt, run_dir / "last.pt")
                if progress is not None:
                    progress.set_postfix(loss=f"{train_loss:.4f}", val_mIoU=f"{miou:.4f}",
                                         best=f"{state['best_miou']:.4f}")
                else:
                    log(f"epoch {epoch}: train loss {train_loss:.4f}, train mIoU {train_miou:.4f}, val loss "
                        f"{val_loss:.4f}, val mIoU {miou:.4f}")
    finally:
        if progress is not None:
            progress.close()
    if rank == 0:
        finish(run_dir, net, val_x, val_y, args, device, log)
    return state["best_miou"]


def metric_state(metric, world):
    """The training metric's state for a checkpoint: its counts summed over the processes (after
    the epoch's sync()), which rank 0 loads on resume while the others start from 0, so that the
    resumed metric reports what the saved one did."""
    state = metric.state_dict()
    return dict(state, matrix=metric.matrix) if world > 1 else state


def resumed_from(metric, ckpt, path, rank):
    """Restores the training metric from a checkpoint (one written before it carried the metric
    leaves it empty; the next epoch resets it anyway)."""
    if "train_metric" not in ckpt or rank != 0:
        return
    try:
        metric.load_state_dict(ckpt["train_metric"])
    except (TypeError, ValueError) as exc:
        raise checkpoint.CheckpointError(f"{path}: its training metric does not fit this run ({exc})") from None


def finish(run_dir, net, val_x, val_y, args, device, log):
    """Pictures of the best model: curves, validation predictions, confusion matrix."""
    path = run_dir / "best.pt"
    best = checkpoint.load(path, map_location=device, required=("model", "state", "matrix"))
    checkpoint.load_model(net, best, path, f"this run's {args.model} of width {args.width}")
    plots.curves(run_dir / "metrics.csv", run_dir / "curves.png")
    sample = torch.arange(min(6, len(val_x)))
    pred = loop.predict(net, val_x[sample], args.batch_size, device)
    plots.predictions(val_x[sample], val_y[sample], pred, run_dir / "predictions.png")
    plots.confusion(best["matrix"], run_dir / "confusion.png")
    log(f"best validation mIoU {best['state']['best_miou']:.4f} at epoch {best['state']['best_epoch']}; "
        f"outputs in {run_dir}")


# ---- prediction and tuning --------------------------------------------------------------------

def predict(args, given=frozenset(), log=print):
    run_dir = Path(args.predict)
    saved = saved_run(run_dir, given, PREDICT_OPTIONS, "predict")
    cfg = argparse.Namespace(**{**vars(parse_args([])), **saved, "data": args.data or saved.get("data"),
                                "backend": args.backend, "cuda_graph": False})
    device = device_for(args, 0)
    if args.threads:
        torch.set_num_threads(args.threads)
    d = load_data(cfg)
    if d.test_images is None or len(d.test_images) == 0:
        sys.exit(f"error: {cfg.data or 'the data set'} has no test_set images to predict")
    net, _, _, _ = build(cfg, device, torch.ones(NUM_CLASSES, device=device))
    path = run_dir / "best.pt"
    checkpoint.load_model(net, checkpoint.load(path, map_location=device), path, f"its {cfg.model} of width {cfg.width}")
    pred = loop.predict(net, d.test_images, args.batch_size, device, tta=args.tta, amp=args.amp, backend=args.backend)
    data.write_submission(run_dir / "submission.csv", pred)
    import numpy as np

    np.savez_compressed(run_dir / "predictions.npz", predictions=pred.numpy())
    log(f"wrote {run_dir / 'submission.csv'} and predictions.npz: {len(pred)} test images"
        f"{' with flip TTA' if args.tta else ''}")


def tune(args, log=print):
    try:
        import optuna
    except ImportError:
        sys.exit("error: --tune needs optuna (pip install optuna)")

    def objective(trial):
        trial_args = argparse.Namespace(**vars(args))
        trial_args.lr = trial.suggest_float("lr", 1e-4, 3e-3, log=True)
        trial_args.weight_decay = trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True)
        trial_args.gamma = trial.suggest_float("gamma", 0.0, 3.0)
        trial_args.batch_size = trial.suggest_categorical("batch_size", [64, 128, 256])
        trial_args.width = trial.suggest_categorical("width", [8, 16, 32])
        trial_args.name = None  # the folder: <study>-trial<n>, suffixed -k where an earlier call made one
        trial_args.tune = trial_args.storage = None  # a trial resumes as a plain run
        trial_args.no_progress = True
        try:
            return train(trial_args, log=lambda *a, **k: None, run_base=f"{args.study_name}-trial{trial.number}")
        except SystemExit:  # a diverging trial (non-finite loss): failed, and the study goes on
            return float("nan")

    study = optuna.create_study(study_name=args.study_name, storage=args.storage, direction="maximize",
                                load_if_exists=True)
    study.optimize(objective, n_trials=args.tune)
    log(f"best validation mIoU {study.best_value:.4f} with {study.best_params}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        if args.predict:
            return predict(args, given_options(argv))
        if args.tune is not None:
            return tune(args)
        if args.resume:  # the run's own configuration, with the run options this call gives (RESUME_OPTIONS)
            given = given_options(argv)
            saved = saved_run(args.resume, given, RESUME_OPTIONS, "resume")
            defaults = vars(parse_args([]))  # options added since the run started
            args = argparse.Namespace(**{**defaults, **saved, **{k: getattr(args, k) for k in given},
                                         "resume": args.resume, "predict": None, "tune": None, "storage": None})
            errors = check_args(args)  # a hand-edited config, or this call's options against the saved ones
            if errors:
                raise checkpoint.CheckpointError(f"--resume {args.resume}: " + "; ".join(errors))
        return train(args)
    except (data.DataError, checkpoint.CheckpointError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    finally:
        # A process that exits with its process group alive can abort in gloo's threads.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
