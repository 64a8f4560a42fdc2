"""The study's `runtime` section: runtime.store takes file:// URLs and refuses object stores; task-runner
settings that cannot work are errors naming the field."""
import copy

import pytest

from kdlib.config import ConfigError, parse_config
from tests.helpers.study import TINY_STUDY


def test_file_url_store_is_its_path(tmp_path):
    raw = copy.deepcopy(TINY_STUDY)
    raw["runtime"]["store"] = f"file://{tmp_path}/store"
    assert parse_config(raw).runtime.store == f"{tmp_path}/store"


@pytest.mark.parametrize("url", ["s3://bucket/kdflow", "gs://bucket/x", "file://otherhost/srv/store"])
def test_object_store_urls_are_refused_naming_the_field(url):
    raw = copy.deepcopy(TINY_STUDY)
    raw["runtime"]["store"] = url
    with pytest.raises(ConfigError, match=r"runtime.store .*only a local or mounted path"):
        parse_config(raw)


@pytest.mark.parametrize(
    "runtime, message",
    [
        ({"max_parallel_students": 2}, "runtime.max_parallel_students > 1 needs task_runner: dask"),
        ({"dask_address": "tcp://127.0.0.1:8786"}, "runtime.dask_address is set but runtime.task_runner is not 'dask'"),
        (
            {"task_runner": "dask", "dask_address": "tcp://127.0.0.1:8786", "max_parallel_students": 4},
            "runtime.max_parallel_students sizes the LocalCluster",
        ),
        ({"task_runner": "ray"}, "runtime.task_runner"),
    ],
)
def test_runner_settings_that_cannot_work_are_errors(runtime, message):
    raw = copy.deepcopy(TINY_STUDY)
    raw["runtime"].update(runtime)
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)
