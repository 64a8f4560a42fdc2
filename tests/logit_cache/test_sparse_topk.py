"""TinyViT's sparse top-K cache: the K most probable classes and their probabilities per view, checked
against the live teacher; a sparse student trains without the dense cache; `logits.topk` in the
config and in both front doors' keys."""
import copy

import pytest
import torch

from kdlib import artifacts
from kdlib.config import ConfigError, ScheduleConfig, parse_config
from kdlib.data.augment import view_seeds
from kdlib.logit_cache import VIEWS, LogitCache, compute_cache, topk_index_dtype
from kdlib.models import build_model
from kdlib.train import fit
from tests.helpers.logit_cache import AUG, live, make_teacher
from tests.helpers.methods import build
from tests.helpers.project import ROOT
from tests.helpers.study import TINY_STUDY


def test_index_dtype_follows_the_class_count():
    assert topk_index_dtype(100) == torch.int16 and topk_index_dtype(32767) == torch.int16
    assert topk_index_dtype(32768) == torch.int32 and topk_index_dtype(21841) == torch.int16


def test_topk_round_trip_matches_the_live_teacher(tiny_ds, written):
    teacher, cache, out = written
    assert cache["topk_indices"].dtype == torch.int16 and cache["topk_probs"].dtype == torch.float16
    meta = artifacts.read_manifest(out)["meta"]
    assert meta["topk"] == 3 and meta["shapes"]["topk_probs"] == [2, len(tiny_ds.x_train), 3]
    loaded = LogitCache(out)
    idx = torch.tensor([9, 2, 30, 4])
    for epoch in range(2):
        logits, _ = live(teacher, tiny_ds, epoch, idx)
        probs = torch.softmax(logits, dim=1)
        b = loaded.batch(epoch, idx, ("topk_probs", "topk_indices"), augment_seed=AUG.seed)
        assert b.logits is None and b.topk_indices.dtype == torch.int64
        # the stored classes are the K most probable, in order, with their probabilities
        order = probs.argsort(dim=1, descending=True)[:, :3]
        assert torch.equal(b.topk_indices, order)
        torch.testing.assert_close(b.topk_probs, probs.gather(1, order), atol=1e-3, rtol=1e-3)  # fp16 storage
        assert torch.equal(cache["seeds"][epoch, idx], view_seeds(AUG.seed, epoch, idx))


def test_sparse_reader_rejects_other_views(written):
    _, _, out = written
    read = LogitCache(out).reader(("topk_probs", "topk_indices"), augment_seed=AUG.seed + 1)
    with pytest.raises(ValueError, match="other views than the student's"):
        read(0, torch.arange(4))


def test_sparse_student_trains_without_the_dense_cache(tiny_ds, written, tmp_path):
    _, cache, out = written
    loaded = LogitCache(out)
    read = loaded.reader(("topk_probs", "topk_indices"), augment_seed=AUG.seed)
    (out / VIEWS).rename(tmp_path / VIEWS)  # the dense file is gone: the sparse student must not need it
    try:
        method = build("sparse_kd")
        fit(build_model("mlp", tiny_ds.num_classes, 3, 8), method, tiny_ds, ScheduleConfig(epochs=2, batch_size=8, lr=0.01),
            0, AUG, teacher_views=read, log=lambda _: None)
    finally:
        (tmp_path / VIEWS).rename(out / VIEWS)
    assert VIEWS not in loaded._files


def test_topk_beyond_the_class_count_is_an_error(tiny_ds):
    with pytest.raises(ValueError, match=r"logits.topk = 11 must be between 1 and the number of classes \(10\)"):
        compute_cache(make_teacher(tiny_ds), tiny_ds, AUG, 1, log=lambda _: None, topk=11)


def test_config_needs_topk_for_a_sparse_method():
    raw = copy.deepcopy(TINY_STUDY)
    raw["logits"].pop("topk", None)
    raw["students"]["methods"] = ["kd", "sparse_kd"]
    with pytest.raises(ConfigError, match="'sparse_kd' trains from the sparse top-K logit cache; set logits.topk"):
        parse_config(raw)
    raw["logits"]["topk"] = 0
    with pytest.raises(ConfigError, match="logits.topk"):
        parse_config(raw)
    raw["logits"]["topk"] = 5
    assert parse_config(raw).logits.topk == 5


def test_both_front_doors_key_the_cache_on_topk():
    import yaml

    from tasks import cache_logits, check_study

    raw = copy.deepcopy(TINY_STUDY)
    data = {"files": {"dataset.pt": "d"}}
    teacher = {"files": {"model.pt": "t"}}
    keys = set()
    for topk in (None, 3, 5):
        raw["logits"]["topk"] = topk
        keys.add(cache_logits.key(parse_config(raw), data, teacher))
    assert len(keys) == 3
    # DVC: the stage reads check_study's file for it, which holds the logits settings
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["cache_logits"]
    assert "artifacts/study/cache_logits.json" in stage["deps"]
    assert check_study.stage_files(parse_config(raw))["cache_logits.json"]["config"]["logits"]["topk"] == 5
