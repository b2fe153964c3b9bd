"""The course's data format (mars_for_students.npz), PNG folders, and the submission CSV.

npz keys: "training_set" (N, 2, 64, 128) float64 with [:, 0] images in 0..255 and [:, 1] masks
in 0..4; "test_set" (M, 64, 128) images. Loaded images are float32 in [0, 1] with a channel
dimension (N, 1, H, W); masks int64 (or uint8) (N, H, W).
"""
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]  # a file or folder name

NUM_CLASSES = 5
CLASS_NAMES = ("background", "soil", "bedrock", "sand", "big rocks")


class DataError(ValueError):
    """A data file that is missing, corrupt or not in the expected format."""


@dataclass
class MarsData:
    images: torch.Tensor  # (N, 1, H, W) float32 in [0, 1]
    masks: torch.Tensor  # (N, H, W) int64 or uint8, values in [0, NUM_CLASSES)
    test_images: Optional[torch.Tensor] = None  # (M, 1, H, W) float32 in [0, 1]


def _images(array: np.ndarray, what: str) -> torch.Tensor:
    if not np.isfinite(array).all():
        raise DataError(f"{what}: contains NaN or Inf")
    lo, hi = float(array.min(initial=0)), float(array.max(initial=0))
    if lo < 0 or hi > 255:
        raise DataError(f"{what}: expected pixel values in [0, 255], found [{lo}, {hi}]")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 255.0).unsqueeze(1)


def _masks(array: np.ndarray, what: str, dtype) -> torch.Tensor:
    if not np.isfinite(array).all() or (array != np.round(array)).any():
        raise DataError(f"{what}: mask values must be whole numbers")
    lo, hi = int(array.min(initial=0)), int(array.max(initial=0))
    if lo < 0 or hi >= NUM_CLASSES:
        raise DataError(f"{what}: expected mask values in [0, {NUM_CLASSES - 1}], found [{lo}, {hi}]")
    return torch.from_numpy(array.astype(np.uint8)).to(dtype)


def load_npz(path: PathLike, mask_dtype: torch.dtype = torch.int64) -> MarsData:
    """Reads and validates a course-format npz (pickles are refused)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # npz files are zip archives
            raise DataError(f"{path}: not an npz file (truncated or corrupt? expected a zip archive of arrays)")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if "training_set" not in keys:
                raise DataError(f"{path}: missing key 'training_set' (found {sorted(keys)}); expected the course's "
                                "mars_for_students.npz format")
            train = f["training_set"]
            test = f["test_set"] if "test_set" in keys else None
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a readable npz file (truncated or corrupt?): {exc}") from exc
    except ValueError as exc:  # object arrays need pickle
        raise DataError(f"{path}: refused to load ({exc}); object arrays are not accepted") from exc
    for name, arr in (("training_set", train), ("test_set", test)):
        if arr is not None and not isinstance(arr, np.ndarray):  # a zip member that is not an .npy array
            raise DataError(f"{path}: {name} is not an array (the archive member is not in .npy format)")
        if arr is not None and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise DataError(f"{path}: {name} must hold real numbers, found dtype {arr.dtype}")
    if train.ndim != 4 or train.shape[1] != 2:
        raise DataError(f"{path}: training_set must have shape (N, 2, H, W), found {train.shape}")
    if test is not None and (test.ndim != 3 or test.shape[1:] != train.shape[2:]):
        raise DataError(f"{path}: test_set must have shape (M, {train.shape[2]}, {train.shape[3]}), found {test.shape}")
    return MarsData(images=_images(train[:, 0], f"{path}: training images"),
                    masks=_masks(train[:, 1], f"{path}: training masks", mask_dtype),
                    test_images=None if test is None else _images(test, f"{path}: test images"))


def load_png_folder(folder: PathLike, mask_dtype: torch.dtype = torch.int64) -> MarsData:
    """Reads folder/images/*.png (grayscale) and folder/masks/*.png (class ids) with matching names."""
    from PIL import Image

    folder = Path(folder)
    image_files = sorted((folder / "images").glob("*.png"))
    if not image_files:
        raise DataError(f"{folder}: expected PNG files under {folder / 'images'}")
    images, masks = [], []
    for f in image_files:
        mask_file = folder / "masks" / f.name
        if not mask_file.is_file():
            raise DataError(f"{folder}: image {f.name} has no mask {mask_file}")
        for png, out, convert in ((f, images, "L"), (mask_file, masks, None)):
            try:
                with Image.open(png) as im:
                    out.append(np.asarray(im.convert(convert) if convert else im, dtype=np.float64))
            except OSError as exc:
                raise DataError(f"{png}: unreadable PNG: {exc}") from exc
        if images[-1].shape != masks[-1].shape:
            raise DataError(f"{f.name}: image {images[-1].shape} and mask {masks[-1].shape} differ in size")
    if len({a.shape for a in images}) > 1:
        raise DataError(f"{folder}: images differ in size")
    return MarsData(images=_images(np.stack(images), f"{folder}: images"),
                    masks=_masks(np.stack(masks), f"{folder}: masks", mask_dtype))


def load(path: PathLike, mask_dtype: torch.dtype = torch.int64) -> MarsData:
    """A course npz file or a PNG folder."""
    return load_png_folder(path, mask_dtype) if Path(path).is_dir() else load_npz(path, mask_dtype)


def save_npz(path: PathLike, images: np.ndarray, masks: np.ndarray, test_images: Optional[np.ndarray] = None) -> None:
    """Writes the course format: images (N, H, W) in 0..255, masks (N, H, W) in 0..4, as float64."""
    arrays = {"training_set": np.stack([images, masks], axis=1).astype(np.float64)}
    if test_images is not None:
        arrays["test_set"] = np.asarray(test_images, dtype=np.float64)
    np.savez_compressed(path, **arrays)


def write_submission(path: PathLike, predictions: torch.Tensor) -> None:
    """The course's CSV: header `id,0,...,H*W-1`, then per test image its index and its predicted
    classes flattened row-major."""
    pred = predictions.reshape(predictions.shape[0], -1).to(torch.int64).cpu().numpy()
    ids = np.arange(pred.shape[0])[:, None]
    header = "id," + ",".join(map(str, range(pred.shape[1])))
    np.savetxt(path, np.hstack([ids, pred]), fmt="%d", delimiter=",", header=header, comments="")
