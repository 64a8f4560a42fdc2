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
