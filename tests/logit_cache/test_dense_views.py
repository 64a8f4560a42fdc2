"""The dense cache of teacher logits per view: a student trained from the cache sees exactly the
teacher logits a live teacher would give; a damaged cache or an epoch it does not hold is an error."""
import pytest
import torch

from kdlib import artifacts
from kdlib.config import AugmentConfig, ScheduleConfig
from kdlib.logit_cache import LogitCache, compute_cache, teacher_view_logits, write_cache
from kdlib.models import build_model
from kdlib.train import fit
from tests.helpers.logit_cache import make_teacher
from tests.helpers.methods import build


def test_cache_replays_live_teacher_views(tiny_ds, tmp_path):
    aug = AugmentConfig(padding=2, flip=True, seed=11)
    teacher = make_teacher(tiny_ds)
    cache = compute_cache(teacher, tiny_ds, aug, epochs=3, batch_size=7, log=lambda _: None)
    meta = write_cache(tmp_path, cache)
    artifacts.write_manifest(tmp_path, "cache_logits", "k", meta)
    assert meta["shapes"]["views"] == [3, len(tiny_ds.x_train), tiny_ds.num_classes] and meta["dtype"] == "float16"
    loaded = LogitCache(tmp_path)

    # Record what a student asks for during real training and compare it with the live teacher.
    asked = []

    def from_cache(epoch, idx):
        asked.append((epoch, idx.clone()))
        return loaded.views(epoch, idx)

    schedule = ScheduleConfig(epochs=3, batch_size=8, lr=0.01)
    fit(build_model("mlp", tiny_ds.num_classes, 3, 8), build("kd"), tiny_ds, schedule, 4, aug,
        teacher_views=from_cache, log=lambda _: None)
    assert len(asked) == 3 * (len(tiny_ds.x_train) // 8)
    for epoch, idx in asked:
        live = teacher_view_logits(teacher, tiny_ds, aug, epoch, idx)
        torch.testing.assert_close(loaded.views(epoch, idx), live, atol=2e-2, rtol=1e-3)  # fp16 storage


def test_views_differ_across_epochs_and_match_plain_when_identity(tiny_ds, tmp_path):
    teacher = make_teacher(tiny_ds)
    cache = compute_cache(teacher, tiny_ds, AugmentConfig(padding=1, flip=True, seed=0), 2, log=lambda _: None)
    assert not torch.equal(cache["views"][0], cache["views"][1])
    identity = compute_cache(teacher, tiny_ds, AugmentConfig(padding=0, flip=False, seed=0), 1, log=lambda _: None)
    torch.testing.assert_close(identity["views"][0], identity["train"])


def test_corrupt_cache_is_detected(tiny_ds, tmp_path):
    teacher = make_teacher(tiny_ds)
    meta = write_cache(tmp_path, compute_cache(teacher, tiny_ds, AugmentConfig(), 1, log=lambda _: None))
    artifacts.write_manifest(tmp_path, "cache_logits", "k", meta)
    with open(tmp_path / "views.pt", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00garbage")
    with pytest.raises(ValueError, match="views.pt"):
        LogitCache(tmp_path)


def test_epoch_beyond_cache_is_an_error(tiny_ds, tmp_path):
    teacher = make_teacher(tiny_ds)
    meta = write_cache(tmp_path, compute_cache(teacher, tiny_ds, AugmentConfig(), 1, log=lambda _: None))
    artifacts.write_manifest(tmp_path, "cache_logits", "k", meta)
    with pytest.raises(ValueError, match="holds 1 epochs"):
        LogitCache(tmp_path).views(1, torch.arange(3))
