"""A logit cache written once per module: 2 epochs of views, teacher features, the top-3 sparse cache."""
import pytest

from kdlib import artifacts
from kdlib.logit_cache import compute_cache, write_cache
from tests.helpers.logit_cache import AUG, make_teacher


@pytest.fixture(scope="module")
def written(tiny_ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    teacher = make_teacher(tiny_ds)
    cache = compute_cache(teacher, tiny_ds, AUG, epochs=2, batch_size=7, log=lambda _: None, topk=3)
    artifacts.write_manifest(out, "cache_logits", "k", write_cache(out, cache))
    return teacher, cache, out
