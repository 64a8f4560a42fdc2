"""Replayable augmentation: crop + flip as a pure function of (seed, epoch, index)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlib.data.augment import augment, augment_params, view_seeds


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


def test_view_seeds_determine_the_view():
    idx = torch.arange(50)
    a, b = view_seeds(3, 1, idx), view_seeds(3, 1, idx.flip(0)).flip(0)
    assert torch.equal(a, b) and a.dtype == torch.int64 and len(set(a.tolist())) == 50
    assert not torch.equal(a, view_seeds(3, 2, idx)) and not torch.equal(a, view_seeds(4, 1, idx))
