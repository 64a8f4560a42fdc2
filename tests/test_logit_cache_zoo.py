"""The cache beyond the dense logits: teacher feature norms and class means (KD++/DKD++) and
TinyViT's sparse top-K cache; each checked against a live teacher or a hand computation."""
import copy

import pytest
import torch

from kdlib import artifacts
from kdlib.config import AugmentConfig, ConfigError, ScheduleConfig, parse_config
from kdlib.data.augment import augment, view_seeds
from kdlib.data.dataset import to_float
from kdlib.logit_cache import (
    FEATURES, SPARSE, VIEWS, LogitCache, TeacherBatch, class_means, compute_cache, topk_index_dtype, write_cache,
)
from tests.helpers.methods import build
from kdlib.models import build_model
from kdlib.train import fit
from tests.conftest import ROOT, TINY_STUDY

AUG = AugmentConfig(padding=2, flip=True, seed=11)


def make_teacher(ds):
    torch.manual_seed(0)
    return build_model("resnet8", ds.num_classes, 3, ds.image_size).eval()


def live(teacher, ds, epoch, idx, aug=AUG):
    """The teacher run by hand on a student's views: (logits, feature), no cache code involved."""
    with torch.no_grad():
        x = augment(ds.x_train[idx], aug.seed, epoch, idx, aug.padding, aug.flip)
        return teacher.eval()(to_float(x, ds.mean, ds.std))


@pytest.fixture(scope="module")
def written(tiny_ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    teacher = make_teacher(tiny_ds)
    cache = compute_cache(teacher, tiny_ds, AUG, epochs=2, batch_size=7, log=lambda _: None, topk=3)
    artifacts.write_manifest(out, "cache_logits", "k", write_cache(out, cache))
    return teacher, cache, out


def test_class_means_by_hand():
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    got = class_means(feats, torch.tensor([0, 0, 2]), 3)
    torch.testing.assert_close(got, torch.tensor([[2.0, 3.0], [0.0, 0.0], [5.0, 6.0]]))


def test_index_dtype_follows_the_class_count():
    assert topk_index_dtype(100) == torch.int16 and topk_index_dtype(32767) == torch.int16
    assert topk_index_dtype(32768) == torch.int32 and topk_index_dtype(21841) == torch.int16


def test_features_and_class_means_match_the_live_teacher(tiny_ds, written):
    teacher, cache, out = written
    loaded = LogitCache(out)
    n = len(tiny_ds.x_train)
    with torch.no_grad():
        _, plain_feat = teacher(to_float(tiny_ds.x_train, tiny_ds.mean, tiny_ds.std))
    for c in range(tiny_ds.num_classes):
        mask = tiny_ds.y_train == c
        torch.testing.assert_close(loaded.batch(0, torch.arange(n), ("class_means",)).class_means[c], plain_feat[mask].mean(0))
    assert loaded.feature_dim == teacher.feature_dim
    idx = torch.tensor([5, 0, 17, 3])
    for epoch in range(2):
        _, feat = live(teacher, tiny_ds, epoch, idx)
        got = loaded.batch(epoch, idx, ("feature_norms",)).feature_norms
        torch.testing.assert_close(got, feat.norm(dim=1))
    assert not torch.equal(cache["feature_norms"][0], cache["feature_norms"][1])  # the views differ per epoch


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


@pytest.mark.parametrize("name", ["kd++", "sparse_kd"])
def test_student_sees_what_the_live_teacher_gives(tiny_ds, written, name):
    """Record every batch a student reads during real training; compare with the live teacher."""
    teacher, _, out = written
    loaded = LogitCache(out)
    method = build(name)
    read = loaded.reader(method.cached, augment_seed=AUG.seed)
    asked = []

    def spy(epoch, idx):
        asked.append((epoch, idx.clone(), read(epoch, idx)))
        return asked[-1][2]

    student = build_model("mlp", tiny_ds.num_classes, 3, 8)
    model = method.build(student, loaded.feature_dim) if name == "kd++" else method.build(student)
    fit(model, method, tiny_ds, ScheduleConfig(epochs=2, batch_size=8, lr=0.01), 4, AUG, teacher_views=spy, log=lambda _: None)
    assert len(asked) == 2 * (len(tiny_ds.x_train) // 8)
    for epoch, idx, got in asked:
        logits, feat = live(teacher, tiny_ds, epoch, idx)
        if name == "kd++":
            torch.testing.assert_close(got.logits, logits, atol=2e-2, rtol=1e-3)  # fp16 storage
            torch.testing.assert_close(got.feature_norms, feat.norm(dim=1))
        else:
            assert got.logits is None and got.feature_norms is None
            probs, classes = torch.softmax(logits, dim=1).sort(dim=1, descending=True)
            assert torch.equal(got.topk_indices, classes[:, :3])
            torch.testing.assert_close(got.topk_probs, probs[:, :3], atol=1e-3, rtol=1e-3)  # fp16 storage


def test_view_seeds_determine_the_view():
    idx = torch.arange(50)
    a, b = view_seeds(3, 1, idx), view_seeds(3, 1, idx.flip(0)).flip(0)
    assert torch.equal(a, b) and a.dtype == torch.int64 and len(set(a.tolist())) == 50
    assert not torch.equal(a, view_seeds(3, 2, idx)) and not torch.equal(a, view_seeds(4, 1, idx))


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


def test_reader_serves_a_tensor_to_logit_methods_and_a_record_to_others(written):
    _, _, out = written
    loaded = LogitCache(out)
    idx = torch.arange(5)
    dense = loaded.reader(("logits",))(1, idx)
    assert isinstance(dense, torch.Tensor) and dense.dtype == torch.float32
    rec = loaded.reader(("logits", "feature_norms", "class_means"))(1, idx)
    assert isinstance(rec, TeacherBatch) and rec.topk_probs is None
    torch.testing.assert_close(rec.logits, dense)
    with pytest.raises(ValueError, match="unknown or none"):
        loaded.reader(("logit",))


def remove_file(out, name):
    """An older cache: the file and its manifest entry are gone."""
    manifest = artifacts.read_manifest(out)
    (out / name).unlink()
    artifacts.write_manifest(out, "cache_logits", manifest["key"], manifest["meta"])


def test_old_cache_without_features_or_sparse_gives_clear_errors(tiny_ds, tmp_path):
    teacher = make_teacher(tiny_ds)
    artifacts.write_manifest(tmp_path, "cache_logits", "k", write_cache(tmp_path, compute_cache(teacher, tiny_ds, AUG, 1, log=lambda _: None)))
    assert not (tmp_path / SPARSE).exists()
    with pytest.raises(ValueError, match="holds no sparse top-K cache .* set logits.topk"):
        LogitCache(tmp_path).reader(("topk_probs", "topk_indices"))
    remove_file(tmp_path, FEATURES)
    cache = LogitCache(tmp_path)
    cache.views(0, torch.arange(3))  # logit-only methods still read it
    with pytest.raises(ValueError, match="holds no teacher features .* re-run cache_logits for kd\\+\\+"):
        cache.reader(build("kd++").cached)


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
