"""MLflow tracking (tasks.tracking): a tracking server keeps its own artifact location; a student's run
names the teacher its entry reads."""
import copy

import pytest

from kdlib.config import parse_config
from tests.helpers.study import TINY_STUDY, study_with_teachers


class FakeMlflow:
    """Records the experiment `tasks.tracking` creates."""

    def __init__(self):
        self.created = []

    def get_experiment_by_name(self, name):
        return None

    def create_experiment(self, name, **kwargs):
        self.created.append((name, kwargs))
        return "1"


@pytest.mark.parametrize("uri, local", [("http://mlflow.lab:5000", False), ("https://mlflow.lab", False), ("sqlite:///mlflow.db", True)])
def test_a_tracking_server_keeps_its_own_artifact_location(uri, local):
    from tasks.tracking import _experiment_id

    raw = copy.deepcopy(TINY_STUDY)
    raw["tracking"]["uri"] = uri
    fake = FakeMlflow()
    assert _experiment_id(fake, parse_config(raw)) == "1"
    ((name, kwargs),) = fake.created
    assert name == "tiny"
    assert ("artifact_location" in kwargs) == local
    if local:
        assert kwargs["artifact_location"].startswith("file://") and kwargs["artifact_location"].endswith("/mlruns")


def test_mlflow_shows_the_teacher_of_a_one_teacher_entry():
    from tasks.tracking import _teacher_param

    cfg = parse_config(study_with_teachers())
    assert [_teacher_param(cfg, m) for m in cfg.students.methods] == [
        {"settings.teacher": "teacher"}, {"settings.teacher": "teacher_mcmi"}, {},  # mt: settings.teachers
    ]


def test_run_names_become_valid_tag_keys():
    from mlflow.utils.validation import _validate_tag_name

    from tasks.tracking import tag_key

    for name in ("teacher second (mlp)", "ce+binarykl_norm seed 0", "kd seed 3", "teacher resnet8"):
        _validate_tag_name(f"reused/{tag_key(name)}")
    assert tag_key("teacher second (mlp)") == "teacher second mlp" and tag_key("ce+x seed 0") == "ce_plus_x seed 0"


class RecordingClient:
    """The MLflow client calls of `log_evaluation` on a student's own run, recorded."""

    def __init__(self):
        self.metrics, self.tags = {}, {}

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.metrics.update({m.key: m.value for m in metrics})
        self.tags.update({t.key: t.value for t in tags})

    def log_artifact(self, run_id, path, artifact_path=None):
        pass


def test_a_token_students_final_metrics_include_its_perplexities(monkeypatch):
    """`final/*` comes from the evaluation's metrics dict: a token study's ppl, val_ppl and val_nll need no listing."""
    from types import SimpleNamespace

    from tasks import tracking
    from tests.helpers.study import TINY_LM_STUDY
    from tests.helpers.token_results import metrics

    client = RecordingClient()
    own = SimpleNamespace(info=SimpleNamespace(run_id="r1"), data=SimpleNamespace(tags={"role": "student", "mlflow.parentRunId": "p"}))
    monkeypatch.setattr(tracking, "_client", lambda cfg: client)
    monkeypatch.setattr(tracking, "_experiment_id", lambda c, cfg: "1")
    monkeypatch.setattr(tracking, "_runs_of", lambda c, e, key: [own])
    values = metrics("kd", 0)
    tracking.log_evaluation(parse_config(copy.deepcopy(TINY_LM_STUDY)), "p", {"key": "k", "dir": "d"}, values, [], "e")
    assert {"final/ppl", "final/val_ppl", "final/val_nll", "final/top1", "final/kl_to_teacher"} <= client.metrics.keys()
    assert client.metrics["final/val_ppl"] == values["val_ppl"] and "final/method" not in client.metrics


def test_a_token_studys_parent_description_says_tokens_not_images():
    from tasks.tracking import describe
    from tests.helpers.study import TINY_LM_STUDY
    from tests.helpers.token_results import DATA

    cfg = parse_config(copy.deepcopy(TINY_LM_STUDY))
    text = describe(cfg, "dvc", DATA | {"source": "text", "corpus": "pydoc"})
    assert ("**Data set** `text` (corpus pydoc): 120 train / 12 validation / 11 test windows of 16 tokens "
            "(1920 / 192 / 176 tokens), vocabulary 300.") in text
    assert "images" not in text
    image = describe(parse_config(copy.deepcopy(TINY_STUDY)), "dvc", {"num_train": 10, "num_test": 5, "num_classes": 2, "shape": [1, 8, 8]})
    assert "10 train / 5 test images, 2 classes, shape 1x8x8" in image
