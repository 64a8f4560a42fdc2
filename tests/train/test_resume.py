"""Kill a real training process mid-run; the same command resumes and ends with identical weights."""
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = """
import sys, torch
from pathlib import Path
from kdlib.config import AugmentConfig, ScheduleConfig
from kdlib.data.sources.synthetic import make_synthetic
from kdlib.methods.base import build_method, validate_method_entry
from kdlib.models import build_model
from kdlib.train import fit

torch.set_num_threads(1)
checkpoint, out = (Path(a) if a != "-" else None for a in sys.argv[1:3])
ds = make_synthetic(seed=0, num_train_per_class=30, num_test_per_class=2, image_size=8, num_classes=10, num_superclasses=2)
teacher = torch.randn(len(ds.x_train), 10, generator=torch.Generator().manual_seed(1))
torch.manual_seed(0)
method = build_method("dhkd", validate_method_entry("dhkd", {"aux_head": "mlp"}))  # dropout: the RNG state must be restored too
model = method.build(build_model("resnet8", 10, 3, 8))
result = fit(model, method, ds, ScheduleConfig(epochs=12, batch_size=16, lr=0.05, warmup_epochs=1), 3,
             AugmentConfig(padding=1, flip=True, seed=2), teacher_views=lambda e, idx: teacher[idx],
             checkpoint=checkpoint, log=lambda line: print(line, flush=True))
torch.save({"model": model.state_dict(), "history": [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]}, out)
"""


def test_killed_run_resumes_to_identical_weights(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    checkpoint = tmp_path / "ckpt.pt"
    uninterrupted, resumed = tmp_path / "a.pt", tmp_path / "b.pt"
    subprocess.run([sys.executable, script, "-", uninterrupted], check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen([sys.executable, script, checkpoint, resumed], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "epoch 4/12" in line:
            time.sleep(0.3)  # land somewhere inside epoch 5
            proc.kill()
            break
    proc.wait(timeout=60)
    assert proc.returncode != 0 and not resumed.exists() and checkpoint.exists()

    rerun = subprocess.run([sys.executable, script, checkpoint, resumed], check=True, capture_output=True, text=True, timeout=300)
    assert "resuming after epoch" in rerun.stdout
    assert "epoch 1/12" not in rerun.stdout
    a = torch.load(uninterrupted, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    assert a["history"] == b["history"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
