"""Teacher features in the cache (KD++/DKD++): per-view feature norms and class means, checked
against the live teacher or a hand computation."""
import torch

from kdlib.data.dataset import to_float
from kdlib.logit_cache import LogitCache, class_means
from tests.helpers.logit_cache import live


def test_class_means_by_hand():
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    got = class_means(feats, torch.tensor([0, 0, 2]), 3)
    torch.testing.assert_close(got, torch.tensor([[2.0, 3.0], [0.0, 0.0], [5.0, 6.0]]))


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
