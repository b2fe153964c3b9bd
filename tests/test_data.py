"""Mars data: loader validation (every bad-file case), cleaning, generator, weights, split, CLI."""
import numpy as np
import pytest
import torch

from marsops import data
from marsops.data import DataError, synthetic


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("mars") / "mars.npz"
    outliers = data.write_npz(path, n_train=300, n_test=40, seed=3)
    return path, outliers


def test_loader_reads_the_course_format(small_set):
    path, _ = small_set
    d = data.load_npz(path)
    assert d.images.shape == (300, 1, 64, 128) and d.images.dtype == torch.float32
    assert 0.0 <= d.images.min() and d.images.max() <= 1.0
    assert d.masks.shape == (300, 64, 128) and d.masks.dtype == torch.int64
    assert d.test_images.shape == (40, 1, 64, 128)
    assert data.load_npz(path, mask_dtype=torch.uint8).masks.dtype == torch.uint8


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make,match", [
    (lambda p: _write(p, images=np.zeros((2, 64, 128))), "missing key 'training_set'"),
    (lambda p: _write(p, training_set=np.zeros((2, 64, 128))), r"shape \(N, 2, H, W\)"),
    (lambda p: _write(p, training_set=np.full((2, 2, 8, 8), 300.0)), r"\[0, 255\]"),
    (lambda p: _write(p, training_set=np.stack([np.zeros((2, 8, 8)), np.full((2, 8, 8), 7.0)], 1)), r"\[0, 4\]"),
    (lambda p: _write(p, training_set=np.stack([np.zeros((2, 8, 8)), np.full((2, 8, 8), 1.5)], 1)), "whole numbers"),
    (lambda p: _write(p, training_set=np.full((2, 2, 8, 8), np.nan)), "NaN"),
    (lambda p: _write(p, training_set=np.zeros((2, 2, 8, 8)), test_set=np.zeros((3, 9, 8))), "test_set"),
    (lambda p: _write(p, training_set=np.array([{"a": 1}], dtype=object)), "object arrays"),
    (lambda p: p, "no such file"),
])
def test_bad_files_give_clear_errors(tmp_path, make, match):
    path = make(tmp_path / "bad.npz")
    with pytest.raises(DataError, match=match):
        data.load_npz(path)


def test_truncated_file_is_a_clear_error(small_set, tmp_path):
    raw = small_set[0].read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.load_npz(cut)


def test_png_folder(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    images, masks, _, _ = synthetic.generate(n_train=3, n_test=0, seed=1, outlier_fraction=0)
    for i in range(3):
        Image.fromarray(images[i].astype(np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(masks[i].astype(np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    d = data.load(tmp_path)
    assert torch.equal(d.masks, torch.from_numpy(masks).long())
    assert torch.allclose(d.images[:, 0], torch.from_numpy(images).float() / 255)
    (tmp_path / "images" / "9.png").write_bytes(b"not a png")
    Image.fromarray(masks[0].astype(np.uint8)).save(tmp_path / "masks" / "9.png")
    with pytest.raises(DataError, match=r"images/9.png: unreadable"):
        data.load(tmp_path)
    Image.fromarray(images[0].astype(np.uint8)).save(tmp_path / "images" / "9.png")
    (tmp_path / "masks" / "9.png").write_bytes(b"not a png")  # the error names the mask, not its image
    with pytest.raises(DataError, match=r"masks/9.png: unreadable"):
        data.load(tmp_path)


def test_every_corrupted_byte_loads_or_is_a_clear_error(tmp_path):
    """Flipped bytes of a compressed npz end in DataError (bad zip, bad CRC, bad deflate stream:
    zlib.error), never another exception."""
    path = tmp_path / "small.npz"
    data.write_npz(path, n_train=2, n_test=1, seed=0)
    raw = path.read_bytes()
    bad = tmp_path / "bad.npz"
    for offset in range(0, min(len(raw), 400), 3):
        damaged = bytearray(raw)
        damaged[offset] ^= 0x5A
        bad.write_bytes(bytes(damaged))
        try:
            data.load_npz(bad)
        except DataError:
            pass


def test_cleaning_finds_exactly_the_planted_outliers(small_set):
    path, outliers = small_set
    d = data.load_npz(path)
    report = data.find_outliers(d.images, d.masks)
    assert len(report.repeated_mask_groups) == 1
    assert report.repeated_mask_groups[0] == sorted(outliers.tolist())
    assert report.kept.tolist() == sorted(set(range(300)) - set(outliers.tolist()))
    assert "removed 13 of 300" in report.summary()


@pytest.mark.parametrize("size", [3, 12, 40])
def test_cleaning_holds_on_small_subsets(small_set, size):
    """A subset holding only a few of the shared-mask images is still cleaned of all of them."""
    path, outliers = small_set
    d = data.load_npz(path)
    inliers = sorted(set(range(300)) - set(outliers.tolist()))
    subset = torch.tensor(sorted(outliers[:2].tolist() + inliers[:size]))
    report = data.find_outliers(d.images[subset], d.masks[subset])
    flagged = {int(subset[i]) for g in report.repeated_mask_groups for i in g}
    assert flagged == set(outliers[:2].tolist())
    assert len(report.kept) == size


def test_cleaning_keeps_single_class_masks_and_exact_duplicates():
    images = torch.rand(5, 1, 8, 8)
    masks = torch.randint(0, 5, (5, 8, 8))
    masks[0] = masks[1] = 3          # two all-sand pictures: an honest repeat
    images[3], masks[3] = images[2], masks[2]  # the same picture twice: a duplicate, not a placeholder mask
    report = data.find_outliers(images, masks)
    assert report.removed == 0 and len(report.kept) == 5
    masks[4] = masks[2]              # a third, different image with that mask: placeholder
    assert data.find_outliers(images, masks).repeated_mask_groups == [[2, 3, 4]]
    with pytest.raises(ValueError, match="min_repeats"):
        data.find_outliers(images, masks, min_repeats=1)


def test_cleaning_flags_constant_images():
    images = torch.rand(6, 1, 8, 8)
    images[2] = 0.5
    report = data.find_outliers(images, torch.randint(0, 5, (6, 8, 8)))
    assert report.constant_images == [2] and 2 not in report.kept.tolist()


def test_generator_is_deterministic_and_hits_the_course_shares():
    a = synthetic.generate(n_train=400, n_test=5, seed=7)
    b = synthetic.generate(n_train=400, n_test=5, seed=7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], synthetic.generate(n_train=400, n_test=5, seed=8)[0])
    images, masks, test_images, outliers = a
    assert images.dtype == np.float64 and images.min() >= 0 and images.max() <= 255
    assert test_images.shape == (5, 64, 128)
    keep = np.setdiff1d(np.arange(400), outliers)
    shares = np.bincount(masks[keep].ravel(), minlength=5) / masks[keep].size
    np.testing.assert_allclose(shares[:4], synthetic.COURSE_SHARES[:4], atol=0.025)
    assert 0.0003 < shares[4] < 0.004  # big rocks: rare, as in the course data (0.13 %)


def test_report_weights_from_the_report_shares():
    counts = torch.tensor([2431, 3390, 2328, 1838, 13])
    masks = torch.repeat_interleave(torch.arange(5), counts)
    w = data.inverse_frequency_weights(masks, 5)
    torch.testing.assert_close(w, torch.tensor([0.0, 0.0359, 0.0523, 0.0662, 9.3615]), rtol=2e-3, atol=1e-4)
    assert data.inverse_frequency_weights(masks, 5, background_weight=1.0)[0] == 1.0


def test_split_is_seeded_disjoint_and_complete():
    train, val = data.split_indices(101, 0.2, seed=4)
    assert len(val) == 20 and len(train) == 81
    assert set(train.tolist()).isdisjoint(val.tolist()) and set(train.tolist()) | set(val.tolist()) == set(range(101))
    assert torch.equal(val, data.split_indices(101, 0.2, seed=4)[1])
    with pytest.raises(ValueError):
        data.split_indices(10, 1.0)


def test_submission_csv(tmp_path):
    pred = torch.randint(0, 5, (3, 64, 128))
    data.write_submission(tmp_path / "s.csv", pred)
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "id," + ",".join(map(str, range(8192)))
    assert len(lines) == 4 and lines[2].split(",")[:3] == ["1"] + [str(int(v)) for v in pred[1].flatten()[:2]]


def test_cli_synth_and_inspect(tmp_path, capsys):
    from marsops.data.__main__ import main

    path = tmp_path / "m.npz"
    main(["synth", str(path), "--n-train", "60", "--n-test", "2", "--seed", "1"])
    main(["inspect", str(path), "--grid", str(tmp_path / "g.png"), "--min-repeats", "2"])
    out = capsys.readouterr().out
    assert "planted outliers" in out and "big rocks" in out and (tmp_path / "g.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="no such file"):
        main(["inspect", str(tmp_path / "missing.npz")])


# ---- found by the second review -----------------------------------------------------------------

def test_find_outliers_checks_shapes_and_takes_empty_and_bf16_sets():
    images, masks = torch.rand(4, 1, 8, 8), torch.randint(0, 3, (4, 8, 8))
    with pytest.raises(ValueError, match="must match"):
        data.find_outliers(images, masks[:3])
    with pytest.raises(ValueError, match="must match"):
        data.find_outliers(images, torch.randint(0, 3, (4, 9, 9)))
    empty = data.find_outliers(images[:0], masks[:0])
    assert empty.removed == 0 and empty.kept.numel() == 0
    masks[1] = masks[0]
    as_bf16 = data.find_outliers(images.bfloat16(), masks)
    assert as_bf16.repeated_mask_groups == data.find_outliers(images, masks).repeated_mask_groups == [[0, 1]]


@pytest.mark.parametrize("n_train", [12, 20, 35])
def test_small_generated_sets_plant_outliers_cleaning_can_find(n_train):
    images, masks, _, outliers = synthetic.generate(n_train=n_train, n_test=0, seed=1)
    assert len(outliers) >= 2
    found = data.find_outliers(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(masks))
    assert sorted(i for g in found.repeated_mask_groups for i in g) == sorted(outliers.tolist())


@pytest.mark.parametrize("kwargs,match", [(dict(outlier_fraction=2), "outlier_fraction"),
                                          (dict(outlier_fraction=-0.5), "outlier_fraction"),
                                          (dict(n_train=-1), "n_train"), (dict(height=4), "at least 8")])
def test_generator_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic.generate(**{"n_train": 4, "n_test": 0, **kwargs})


def test_loader_refuses_complex_arrays_and_members_that_are_not_npy(tmp_path):
    complex_path = tmp_path / "complex.npz"
    np.savez(complex_path, training_set=np.ones((2, 2, 4, 4)) * (1 + 2j))
    with pytest.raises(DataError, match="real numbers"):
        data.load_npz(complex_path)
    import zipfile

    raw = tmp_path / "raw.npz"
    with zipfile.ZipFile(raw, "w") as z:
        z.writestr("training_set.npy", b"not an npy file at all")
    with pytest.raises(DataError):
        data.load_npz(raw)
