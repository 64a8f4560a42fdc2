"""What a method reads from the cache (`LogitCache.reader`): during real training a student reads what
the live teacher gives; logit methods get a tensor, others a record; an older cache without the
features or the sparse cache gives clear errors."""
import pytest
import torch

from kdlib import artifacts
from kdlib.config import ScheduleConfig
from kdlib.logit_cache import FEATURES, SPARSE, LogitCache, TeacherBatch, compute_cache, write_cache
from kdlib.models import build_model
from kdlib.train import fit
from tests.helpers.logit_cache import AUG, live, make_teacher
from tests.helpers.methods import build


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
