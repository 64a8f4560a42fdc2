"""runtime.task_runner: dask runs the study on a 2-worker LocalCluster with the same results
as the sequential thread runner; runtime.store takes file:// URLs and refuses object stores."""
import copy
import json

import pytest
import torch

from kdlib import artifacts
from kdlib.config import ConfigError, parse_config
from tests.conftest import TINY_STUDY
from tests.project import BIN, make_project, project_env, run

# Both runners in one process (one temporary Prefect server), each on its own store.
SCRIPT = """
import asyncio, json, sys
from flows.pipeline import kd_pipeline
from tests.project import task_states

out = {}
for runner, store, extra in (("thread", "store_thread", {}), ("dask", "file://STORE_DASK", {"max_parallel_students": 2})):
    runtime = {"task_runner": runner, "store": store.replace("STORE_DASK", sys.argv[1]), **extra}
    state = kd_pipeline(params_path="params.yaml", overrides={"runtime": runtime}, return_state=True)
    out[runner] = {"ok": state.is_completed(), "summary": state.result()["dir"],
                   "tasks": asyncio.run(task_states(state.state_details.flow_run_id))}
print("RESULT" + json.dumps(out))
"""


def students(store):
    """{(method, seed): state dict} of the students in a store."""
    found = {}
    for manifest in (store / "train_student").glob("*/manifest.json"):
        meta = json.loads(manifest.read_text())["meta"]
        found[meta["method"], meta["seed"]] = artifacts.load_tensors(manifest.parent / "model.pt")
    return found


@pytest.mark.slow
def test_dask_local_cluster_equals_the_thread_runner(tmp_path):
    study = copy.deepcopy(TINY_STUDY)
    study["students"]["seeds"] = [0, 1]
    dest = make_project(tmp_path, study)
    result = run([str(BIN / "python"), "-c", SCRIPT, str(dest / "store_dask")], dest, project_env(dest), timeout=600)
    out = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    for runner in ("thread", "dask"):
        assert out[runner]["ok"], runner
        # every task is a task run of the one kd-pipeline flow run, whichever runner ran it
        assert {state for _, state in out[runner]["tasks"]} == {"Completed"}, out[runner]["tasks"]
    assert [name for name, _ in out["dask"]["tasks"]] == [name for name, _ in out["thread"]["tasks"]]
    assert len(out["dask"]["tasks"]) == 1 + 1 + 1 + 4 + 4 + 1

    thread, dask = students(dest / "store_thread"), students(dest / "store_dask")
    assert sorted(thread) == sorted(dask) == [("ce", 0), ("ce", 1), ("kd", 0), ("kd", 1)]
    for pair, weights in thread.items():
        for name, tensor in weights.items():
            assert torch.equal(dask[pair][name], tensor), (pair, name)
    summaries = [json.loads((dest / out[r]["summary"] / "summary.json").read_text())["methods"] for r in ("thread", "dask")]
    assert summaries[0] == summaries[1]


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


def test_task_runner_picks_the_runner():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.runners import task_runner

    raw = copy.deepcopy(TINY_STUDY)
    assert isinstance(task_runner(parse_config(raw)), ThreadPoolTaskRunner)
    raw["runtime"].update(task_runner="dask", max_parallel_students=3)
    local = task_runner(parse_config(raw))
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 3
    assert local.cluster_kwargs["threads_per_worker"] == 1
    assert local.cluster_kwargs["dashboard_address"].startswith("127.0.0.1:")  # never all interfaces
    raw["runtime"] = {"task_runner": "dask", "dask_address": "tcp://10.0.0.1:8786"}
    assert task_runner(parse_config(raw)).address == "tcp://10.0.0.1:8786"


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


def fit_tiny(tiny_ds, speed):
    """One epoch of KD for resnet8 on the tiny data set from fixed teacher logits, with `speed`."""
    from kdlib.config import AugmentConfig, ScheduleConfig
    from tests.helpers.methods import build
    from kdlib.models import build_model
    from kdlib.train import fit

    torch.manual_seed(0)
    model = build_model("resnet8", tiny_ds.num_classes, tiny_ds.num_channels, tiny_ds.image_size)
    teacher = torch.randn(len(tiny_ds.x_train), tiny_ds.num_classes, generator=torch.Generator().manual_seed(1))
    result = fit(
        model, build("kd"), tiny_ds, ScheduleConfig(epochs=1, batch_size=16, lr=0.05), 0, AugmentConfig(),
        teacher_views=lambda epoch, idx: teacher[idx], log=lambda _: None, speed=speed,
    )
    return model, result.history[0]


def test_channels_last_changes_the_layout_not_the_result(tiny_ds):
    from kdlib.train import Speed

    plain, plain_record = fit_tiny(tiny_ds, Speed())
    nhwc, nhwc_record = fit_tiny(tiny_ds, Speed(channels_last=True))
    assert nhwc.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for (name, a), b in zip(plain.state_dict().items(), nhwc.state_dict().values()):
        torch.testing.assert_close(b.contiguous(), a, rtol=1e-4, atol=1e-5, msg=name)
    assert nhwc_record["loss"] == pytest.approx(plain_record["loss"], rel=1e-5)


def test_bf16_autocast_runs_the_forward_in_bfloat16(tiny_ds):
    from kdlib.train import Speed

    plain, plain_record = fit_tiny(tiny_ds, Speed())
    bf16, bf16_record = fit_tiny(tiny_ds, Speed(bf16=True))
    # the weights stay float32 (autocast casts per op); the losses move by bfloat16 rounding
    # (8 mantissa bits: ~0.4% per op), so they differ from fp32 but not by more than a few percent
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert bf16_record["loss"] != plain_record["loss"]
    assert bf16_record["loss"] == pytest.approx(plain_record["loss"], rel=0.03)
