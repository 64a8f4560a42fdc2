"""Language-model distillation through the pipeline's steps: every method that runs on tokens
trains per position from the top-K token cache and is evaluated with the LM metrics; a student
trained from the cache equals one trained against the live teacher restricted to the same top-K."""
import copy
import re

import pytest
import torch

from kdlib import artifacts
from kdlib.config import ConfigError, parse_config
from kdlib.data.dataset import load_dataset
from kdlib.topk import restrict_to_topk
from kdlib.methods.base import build_method, method_class, method_names
from kdlib.models import build_model
from kdlib.token_cache import TokenCache
from kdlib.train import fit
from tasks import cache_logits, evaluate, prepare_data, train_student, train_teacher
from tests.helpers.study import TINY_LM_STUDY


def several_teachers(method: str) -> bool:
    """multi_teacher_kd: the tiny token study has one teacher."""
    return "teachers" in method_class(method).Settings.model_fields


TOKEN_METHODS = [m for m in method_names() if method_class(m).token_refusal() is None and not several_teachers(m)]
IMAGE_ONLY = [m for m in method_names() if method_class(m).token_refusal() is not None]


def lm_study(root, methods):
    raw = copy.deepcopy(TINY_LM_STUDY)
    raw["students"]["methods"] = methods
    raw["methods"] = {}
    raw["tracking"]["enabled"] = False
    raw["runtime"]["store"] = str(root / "store")
    return raw


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    cfg = parse_config(lm_study(root, TOKEN_METHODS))
    data = prepare_data.run(cfg, root / "data")
    teacher = train_teacher.run(cfg, data, root / "teacher")
    cache = cache_logits.run(cfg, data, teacher, root / "logits")
    return cfg, data, teacher, cache, root


def test_the_token_cache_states_its_bytes_per_token(upstream):
    cfg, data, teacher, cache, root = upstream
    meta = cache["meta"]
    assert meta["kind"] == "tokens" and meta["topk"] == 8
    # K = 8 of V = 300: 8 * (2 + 2) + 4 bytes, against 600 for the dense fp16 cache
    assert meta["bytes_per_token"] == 36 and meta["dense_bytes_per_token"] == 600
    assert TokenCache(root / "logits").windows == data["meta"]["num_train"]


@pytest.mark.parametrize("method", TOKEN_METHODS)
def test_token_method_trains_and_evaluates(upstream, method):
    cfg, data, teacher, cache, root = upstream
    student = train_student.run(cfg, method, 0, data, cache, root / "students" / method)
    assert "failed" not in student["meta"], student["meta"].get("failed")
    assert artifacts.is_complete(root / "students" / method)
    metrics = evaluate.run(cfg, data, cache, student, root / "evaluations" / method)["meta"]["metrics"]
    assert metrics["method"] == method and 0.0 <= metrics["top1"] <= 100.0
    assert metrics["ppl"] == pytest.approx(torch.tensor(metrics["nll"]).exp().item())
    assert 1.0 < metrics["val_ppl"] < 300 * 10  # a trained model is not far worse than uniform over V = 300
    assert 0.0 <= metrics["agreement"] <= 100.0 and metrics["kl_to_teacher"] >= 0.0
    train_student.load_student(cfg, data, student)


def test_the_methods_refused_on_tokens_are_the_feature_and_image_stage_readers():
    assert IMAGE_ONLY == ["dkd++", "kd++", "uskd"]


@pytest.mark.parametrize("method", IMAGE_ONLY)
def test_a_method_that_needs_images_is_refused_on_tokens_naming_it(tmp_path, method):
    with pytest.raises(ConfigError, match=re.escape(f"students.methods: '{method}' cannot train on tokens")):
        parse_config(lm_study(tmp_path, [method]))


def test_an_image_arch_on_text_is_refused_naming_the_field(tmp_path):
    raw = lm_study(tmp_path, ["ce"])
    raw["students"]["arch"] = "resnet8"
    with pytest.raises(ConfigError, match=r"students.arch: resnet8 reads images; data.source 'text' yields tokens"):
        parse_config(raw)


def test_a_student_from_the_cache_equals_one_from_the_live_teacher_restricted_to_its_top_k(upstream):
    """The cache rounds the top-K logits to fp16; nothing else differs. A student of the full
    (unrestricted) live teacher is the control: it must differ far more."""
    cfg, data, teacher_manifest, cache_manifest, root = upstream
    ds = load_dataset(root / "data" / prepare_data.DATASET)
    teacher = train_teacher.load_teacher(cfg, data, teacher_manifest)
    k = cache_manifest["meta"]["topk"]
    # SGD: the weights move with the gradients, so the cache's rounding shows at its own size
    # (AdamW's normalised steps would amplify any difference)
    schedule = cfg.students.schedule.model_copy(update={"optimizer": "sgd", "lr": 0.5})

    def live(restricted: bool):
        def views(epoch, indices):
            with torch.no_grad():
                logits = teacher(ds.x_train[indices])[0]
            return restrict_to_topk(logits, k) if restricted else logits
        return views

    def student(views):
        torch.manual_seed(0)
        model = build_model(cfg.students.arch, ds.num_classes, ds.num_channels, ds.image_size)
        method = build_method("kd", cfg.method_settings("kd"))
        fit(model, method, ds, schedule, 0, cfg.augment, teacher_views=views, log=lambda _: None)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    from_cache = student(TokenCache(root / "logits").teacher_views)
    from_restricted = student(live(True))
    from_full = student(live(False))
    restricted_gap = (from_cache - from_restricted).abs().max().item()
    full_gap = (from_cache - from_full).abs().max().item()
    assert restricted_gap < 1e-4, restricted_gap  # measured 4e-6
    assert full_gap > 1000 * restricted_gap, (restricted_gap, full_gap)  # measured 0.87
