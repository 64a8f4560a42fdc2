"""Tests for kdlib.data: generators, the digits split, replayable augmentation, I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdlib.data import (
    SOURCES,
    Dataset,
    augment,
    augment_params,
    load_dataset,
    load_digits,
    make_synthetic,
    save_dataset,
    to_float,
)


@pytest.fixture(scope="module")
def small() -> Dataset:
    return make_synthetic(seed=0, num_train_per_class=6, num_test_per_class=3, image_size=8)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)


def _same(a: Dataset, b: Dataset) -> bool:
    return all(
        torch.equal(getattr(a, f), getattr(b, f))
        for f in ("x_train", "y_train", "x_test", "y_test", "coarse_of_class")
    ) and (a.mean, a.std, a.num_classes) == (b.mean, b.std, b.num_classes)


def test_sources() -> None:
    assert SOURCES == ("synthetic", "digits")


# -----------------------------------------------------------------------------
# Synthetic generator


def test_synthetic_is_deterministic_per_seed(small: Dataset) -> None:
    again = make_synthetic(seed=0, num_train_per_class=6, num_test_per_class=3, image_size=8)
    other = make_synthetic(seed=1, num_train_per_class=6, num_test_per_class=3, image_size=8)
    assert _same(small, again)
    assert not torch.equal(small.x_train, other.x_train)
    assert not torch.equal(small.y_train, other.y_train)


def test_synthetic_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_synthetic(seed=5, num_train_per_class=2, num_test_per_class=1, image_size=8)
    assert torch.equal(torch.rand(3), expected)


def test_synthetic_shapes_dtypes_and_balance(small: Dataset) -> None:
    assert small.x_train.shape == (600, 3, 8, 8) and small.x_train.dtype == torch.uint8
    assert small.x_test.shape == (300, 3, 8, 8) and small.x_test.dtype == torch.uint8
    assert small.y_train.dtype == torch.int64 and small.y_test.dtype == torch.int64
    assert small.num_classes == 100 and small.num_channels == 3 and small.image_size == 8
    assert torch.equal(torch.bincount(small.y_train, minlength=100), torch.full((100,), 6))
    assert torch.equal(torch.bincount(small.y_test, minlength=100), torch.full((100,), 3))
    # 20 superclasses of 5 fine classes each.
    assert small.coarse_of_class.dtype == torch.int64 and small.coarse_of_class.shape == (100,)
    assert torch.equal(torch.bincount(small.coarse_of_class), torch.full((20,), 5))
    # The train order is shuffled, not grouped by class.
    assert not torch.equal(small.y_train, small.y_train.sort().values)
    # Pixels use a good part of the uint8 range.
    assert int(small.x_train.min()) < 40 and int(small.x_train.max()) > 215


def test_synthetic_channel_stats_match_train_split(small: Dataset) -> None:
    x = small.x_train.double() / 255
    assert len(small.mean) == len(small.std) == 3
    assert torch.allclose(torch.tensor(small.mean, dtype=torch.float64), x.mean((0, 2, 3)))
    assert torch.allclose(torch.tensor(small.std, dtype=torch.float64), x.std((0, 2, 3)))


@pytest.mark.parametrize("size", [16, 32])
def test_synthetic_other_sizes(size: int) -> None:
    ds = make_synthetic(
        seed=0, num_train_per_class=2, num_test_per_class=1, image_size=size,
        num_classes=20, num_superclasses=4,
    )  # fmt: skip
    assert ds.x_train.shape == (40, 3, size, size) and ds.image_size == size
    assert torch.equal(torch.bincount(ds.coarse_of_class), torch.full((4,), 5))


def test_synthetic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_synthetic(0, 2, 1, 8, num_classes=10, num_superclasses=3)
    with pytest.raises(ValueError):
        make_synthetic(0, 2, 1, 8, difficulty=-1.0)


def test_siblings_are_closer_than_other_classes() -> None:
    """Class-mean images of one superclass are nearer each other than across."""
    ds = make_synthetic(seed=3, num_train_per_class=20, num_test_per_class=0, image_size=8)
    x = ds.x_train.float().flatten(1) / 255
    means = torch.zeros(ds.num_classes, x.shape[1]).index_add_(0, ds.y_train, x) / 20
    dist = torch.cdist(means, means)
    same = ds.coarse_of_class[:, None] == ds.coarse_of_class[None, :]
    off_diag = ~torch.eye(ds.num_classes, dtype=torch.bool)
    within = dist[same & off_diag].mean()
    across = dist[~same].mean()
    assert within < 0.8 * across
    # ... and it holds class by class: each class's nearest other class is mostly a sibling.
    nearest = dist.masked_fill(~off_diag, float("inf")).argmin(1)
    hits = (ds.coarse_of_class[nearest] == ds.coarse_of_class).float().mean()
    assert hits > 0.7


def test_higher_difficulty_adds_within_class_spread() -> None:
    def spread(difficulty: float) -> float:
        ds = make_synthetic(0, 10, 0, 8, num_classes=20, num_superclasses=4, difficulty=difficulty)
        x = ds.x_train.float().flatten(1)
        means = torch.zeros(20, x.shape[1]).index_add_(0, ds.y_train, x) / 10
        return float((x - means[ds.y_train]).norm(dim=1).mean())

    assert spread(0.0) < spread(1.0) < spread(2.0)


# -----------------------------------------------------------------------------
# Digits


def test_digits_split(digits: Dataset) -> None:
    assert digits.x_train.shape[0] + digits.x_test.shape[0] == 1797
    assert digits.x_train.shape[1:] == (1, 8, 8) and digits.x_train.dtype == torch.uint8
    assert digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10 and digits.num_channels == 1 and digits.image_size == 8
    assert torch.equal(digits.coarse_of_class, torch.arange(10))
    assert abs(digits.x_test.shape[0] - 0.2 * 1797) <= 1
    assert int(digits.x_train.max()) == 255 and int(digits.x_train.min()) == 0
    # Stratified: every class has ~20% of its samples in the test split.
    n_test = torch.bincount(digits.y_test, minlength=10).float()
    n_all = n_test + torch.bincount(digits.y_train, minlength=10).float()
    assert torch.all((n_test / n_all - 0.2).abs() < 0.02)
    assert len(digits.mean) == 1 and len(digits.std) == 1


def test_digits_deterministic_split(digits: Dataset) -> None:
    assert _same(digits, load_digits(seed=0))
    other = load_digits(seed=1)
    assert not torch.equal(digits.y_test, other.y_test)


def test_digits_values_are_scaled_sklearn_pixels(digits: Dataset) -> None:
    from sklearn.datasets import load_digits as sk_load

    raw = torch.from_numpy(sk_load().images).double()
    allowed = torch.round(torch.arange(17, dtype=torch.float64) * 255 / 16).to(torch.uint8)
    assert torch.isin(digits.x_train.unique(), allowed).all()
    assert raw.shape[0] == 1797


# -----------------------------------------------------------------------------
# Augmentation


def _images(n: int = 32, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def test_augment_identity_without_padding_or_flip() -> None:
    x = _images()
    out = augment(x, seed=0, epoch=3, indices=torch.arange(32), padding=0, flip=False)
    assert torch.equal(out, x) and out.dtype == torch.uint8
    dy, dx, fl = augment_params(0, 3, torch.arange(32), padding=0, flip=False)
    assert (dy == 0).all() and (dx == 0).all() and not fl.any()


def test_augment_params_pure_function_of_seed_epoch_index() -> None:
    idx = torch.arange(100, 300)
    dy, dx, fl = augment_params(7, 2, idx, padding=4, flip=True)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(1))
    dy2, dx2, fl2 = augment_params(7, 2, idx[perm], padding=4, flip=True)
    assert torch.equal(dy2, dy[perm]) and torch.equal(dx2, dx[perm]) and torch.equal(fl2, fl[perm])
    # One sample alone, or in a different batch, gets the same parameters.
    for j in (0, 57, 199):
        a = augment_params(7, 2, idx[j : j + 1], padding=4, flip=True)
        assert (int(a[0]), int(a[1]), bool(a[2])) == (int(dy[j]), int(dx[j]), bool(fl[j]))


def test_augment_images_independent_of_batch_composition() -> None:
    x = _images(64)
    idx = torch.arange(1000, 1064)
    full = augment(x, 11, 5, idx, padding=2, flip=True)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    shuffled = augment(x[perm], 11, 5, idx[perm], padding=2, flip=True)
    assert torch.equal(shuffled, full[perm])
    half = augment(x[10:20], 11, 5, idx[10:20], padding=2, flip=True)
    assert torch.equal(half, full[10:20])


def test_augment_params_change_with_epoch_and_seed() -> None:
    idx = torch.arange(500)
    base = torch.stack(augment_params(0, 0, idx, 2, True)[:2])
    assert not torch.equal(base, torch.stack(augment_params(0, 1, idx, 2, True)[:2]))
    assert not torch.equal(base, torch.stack(augment_params(1, 0, idx, 2, True)[:2]))
    assert not torch.equal(augment_params(0, 0, idx, 2, True)[2], augment_params(0, 1, idx, 2, True)[2])


def test_augment_params_ranges_and_flip_rate() -> None:
    idx = torch.arange(20_000)
    dy, dx, fl = augment_params(3, 9, idx, padding=4, flip=True)
    assert dy.dtype == torch.int64 and fl.dtype == torch.bool
    assert int(dy.min()) == 0 and int(dy.max()) == 8 and int(dx.min()) == 0 and int(dx.max()) == 8
    assert torch.bincount(dy, minlength=9).min() > 20_000 / 9 * 0.85
    assert torch.bincount(dx, minlength=9).min() > 20_000 / 9 * 0.85
    assert 0.47 < fl.float().mean() < 0.53
    # dy, dx and flip are not trivially correlated.
    assert (dy == dx).float().mean() < 0.2
    _, _, no_flip = augment_params(3, 9, idx, padding=4, flip=False)
    assert not no_flip.any()


def test_flip_is_exact_horizontal_flip() -> None:
    x = _images(64)
    idx = torch.arange(64)
    out = augment(x, 0, 0, idx, padding=0, flip=True)
    _, _, fl = augment_params(0, 0, idx, padding=0, flip=True)
    assert fl.any() and (~fl).any()
    assert torch.equal(out[fl], x[fl].flip(-1))
    assert torch.equal(out[~fl], x[~fl])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_matches_hand_sliced_padded_image(dtype: torch.dtype) -> None:
    x = _images(16, h=8, w=10).to(dtype)
    idx = torch.arange(40, 56)
    p = 3
    out = augment(x, 4, 1, idx, padding=p, flip=True)
    assert out.dtype == dtype and out.shape == x.shape
    dy, dx, fl = augment_params(4, 1, idx, padding=p, flip=True)
    padded = F.pad(x, (p, p, p, p))
    for i in range(16):
        crop = padded[i, :, int(dy[i]) : int(dy[i]) + 8, int(dx[i]) : int(dx[i]) + 10]
        if fl[i]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop), i


def test_augment_rejects_mismatched_indices() -> None:
    with pytest.raises(ValueError):
        augment(_images(4), 0, 0, torch.arange(3), padding=1, flip=True)


# -----------------------------------------------------------------------------
# Normalisation and persistence


def test_to_float_normalises_train_split(small: Dataset) -> None:
    x = to_float(small.x_train, small.mean, small.std)
    assert x.dtype == torch.float32 and x.shape == small.x_train.shape
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_save_load_round_trip(tmp_path: Path, small: Dataset, digits: Dataset) -> None:
    for ds in (small, digits):
        path = tmp_path / "nested" / f"{ds.name}.pt"
        save_dataset(ds, path)
        back = load_dataset(path)
        assert _same(ds, back) and back.name == ds.name
        assert isinstance(back.mean, tuple) and isinstance(back.std, tuple)
    # The atomic write leaves no temp files behind.
    assert sorted(p.name for p in (tmp_path / "nested").iterdir()) == sorted(
        f"{ds.name}.pt" for ds in (small, digits)
    )


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_dataset(path)


def test_load_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_dataset(path)


def test_load_wrong_content(tmp_path: Path, small: Dataset) -> None:
    path = tmp_path / "wrong.pt"
    torch.save({"x_train": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="wrong.pt"):
        load_dataset(path)
    # Right keys, wrong dtype.
    save_dataset(small, path)
    payload = torch.load(path, weights_only=True)
    payload["x_train"] = payload["x_train"].float()
    torch.save(payload, path)
    with pytest.raises(ValueError, match="wrong.pt"):
        load_dataset(path)
