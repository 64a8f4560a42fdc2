"""runtime.ddp: one student on 2 CPU processes (torchrun, gloo) equals single-process training.

The student is the tiny study's mlp, which has no batch norm: on CPU each DDP rank would
normalise by its shard's statistics (SyncBatchNorm needs CUDA, see kdlib.distributed),
so only a student without batch norm can be held to single-process equality here.
"""
import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from kdlib import artifacts, distributed
from kdlib.config import parse_config
from tasks import cache_logits, common, prepare_data, train_student, train_teacher
from tests.helpers.project import ROOT, free_port, project_env
from tests.helpers.study import TINY_STUDY

DRIVER = textwrap.dedent(
    """
    import json, sys
    import torch, yaml
    from kdlib.config import parse_config
    from tasks import train_student

    torch.set_num_threads(1)
    study, inputs, out_dir = sys.argv[1:]
    cfg = parse_config(yaml.safe_load(open(study)))
    data, logits = json.load(open(inputs))
    train_student.run(cfg, "kd", 0, data, logits, out_dir)
    """
)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"]["methods"] = ["kd"]
    raw["methods"] = {"kd": {}}
    raw["tracking"]["enabled"] = False
    raw["runtime"]["store"] = str(root / "store")
    cfg = parse_config(raw)
    data = prepare_data.run(cfg, root / "data")
    teacher = train_teacher.run(cfg, data, root / "teacher")
    logits = cache_logits.run(cfg, data, teacher, root / "logits")
    return raw, cfg, data, logits, root


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(upstream):
    raw, cfg, data, logits, root = upstream
    single = train_student.run(cfg, "kd", 0, data, logits, root / "single")

    ddp_raw = copy.deepcopy(raw)
    ddp_raw["runtime"].update(ddp=True, store=str(root / "ddp_store"))
    (root / "ddp.yaml").write_text(yaml.safe_dump(ddp_raw))
    (root / "inputs.json").write_text(json.dumps([data, logits]))
    (root / "driver.py").write_text(DRIVER)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(root / "driver.py"), str(root / "ddp.yaml"), str(root / "inputs.json"),
        str(root / "ddp"),
    ]
    env = project_env(ROOT, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # rank 0 alone wrote the artifact: exactly the files of one student (and its timings), one log of each epoch
    written = sorted(p.name for p in (root / "ddp").iterdir())
    assert written == sorted([*single["files"], artifacts.MANIFEST, common.TIMINGS])
    assert result.stdout.count("kd seed 0 epoch 2/2") == 1
    one = artifacts.load_tensors(root / "single" / train_student.MODEL)
    two = artifacts.load_tensors(root / "ddp" / train_student.MODEL)
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    h1 = json.loads((root / "single" / train_student.HISTORY).read_text())
    h2 = json.loads((root / "ddp" / train_student.HISTORY).read_text())
    # the history is global (all-reduced over ranks), so it matches the single process's
    for r1, r2 in zip(h1, h2, strict=True):
        assert r2["train_top1"] == pytest.approx(r1["train_top1"], abs=1e-9)
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-4)
        assert r2["test_top1"] == pytest.approx(r1["test_top1"], abs=1e-9)


def test_ddp_outside_torchrun_is_an_error(upstream, tmp_path, monkeypatch):
    raw, _, data, logits, _ = upstream
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    ddp_raw = copy.deepcopy(raw)
    ddp_raw["runtime"].update(ddp=True, store=str(tmp_path / "store"))
    with pytest.raises(RuntimeError, match="runtime.ddp is true but this process was not started by torchrun"):
        train_student.run(parse_config(ddp_raw), "kd", 0, data, logits, tmp_path / "out")


def test_shard_is_the_whole_batch_on_one_process():
    idx = torch.arange(10)
    assert distributed.world() == (0, 1) and distributed.is_main()
    assert torch.equal(distributed.shard(idx), idx)


def test_what_ddp_cannot_do_is_refused_before_training():
    from kdlib.config import ScheduleConfig
    from tests.helpers.methods import build
    from kdlib.models import build_model
    from kdlib.train import _check_ddp

    mlp = build_model("mlp", 10, 1, 8)
    cpu = torch.device("cpu")
    logged = []
    with pytest.raises(ValueError, match="schedule.batch_size 63 must be a multiple of the 2 DDP ranks"):
        _check_ddp(mlp, build("kd"), ScheduleConfig(epochs=1, batch_size=63), 2, cpu, logged.append, "s")
    with pytest.raises(ValueError, match="runtime.ddp: method 'dhkd' computes its own gradients"):
        _check_ddp(mlp, build("dhkd", {"grad_align": "official"}), ScheduleConfig(epochs=1, batch_size=64), 2, cpu,
                   logged.append, "s")
    with pytest.raises(ValueError, match="runtime.ddp: method 'dhkd' computes its own gradients"):
        _check_ddp(mlp, build("dhkd"), ScheduleConfig(epochs=1, batch_size=64), 2, cpu, logged.append, "s")
    _check_ddp(mlp, build("dhkd", {"grad_align": "none"}), ScheduleConfig(epochs=1, batch_size=64), 2, cpu,
               logged.append, "s")
    _check_ddp(mlp, build("kd"), ScheduleConfig(epochs=1, batch_size=64), 2, cpu, logged.append, "s")
    assert logged == []
    # a batch-norm student on CPU trains with per-shard statistics, and the log says so
    _check_ddp(build_model("resnet8", 10, 1, 8), build("kd"), ScheduleConfig(epochs=1, batch_size=64), 2, cpu,
               logged.append, "s")
    assert logged == ["s DDP on cpu: batch norm uses each rank's shard statistics (SyncBatchNorm needs CUDA)"]
