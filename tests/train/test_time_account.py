"""kdlib.time_account: phases nest without double counting, `other` is the unclaimed rest,
charging without an open account does nothing, and `fit` charges its training, test
predictions and diagnostics to their phases."""
import threading
import time

import pytest
import torch

from kdlib import time_account
from kdlib.config import AugmentConfig, ScheduleConfig
from kdlib.models import build_model
from kdlib.time_account import PHASES, WORK, TimeAccount
from kdlib.train import fit
from tests.helpers.methods import build


def test_a_nested_phase_pauses_the_outer_one():
    account = TimeAccount("step", started=time.time())
    with account.phase("compute"):
        time.sleep(0.05)
        with account.phase("diagnostics"):
            time.sleep(0.1)
        time.sleep(0.05)
    record = account.record()
    assert record["seconds"]["diagnostics"] == pytest.approx(0.1, abs=0.03)
    assert record["seconds"]["compute"] == pytest.approx(0.1, abs=0.03)  # the inner 0.1 s is not counted twice
    assert record["wall"] >= sum(record["seconds"].values())
    assert record["other"] == pytest.approx(record["wall"] - sum(record["seconds"].values()), abs=1e-3)
    assert record["work"] == pytest.approx(sum(record["seconds"][p] for p in WORK), abs=1e-3)


def test_time_before_the_account_is_startup():
    account = TimeAccount("step", "kd-0", started=time.time() - 2.0)
    record = account.record()
    assert record["seconds"]["startup"] == pytest.approx(2.0, abs=0.05)
    assert (record["step"], record["entry"]) == ("step", "kd-0")
    assert set(record["seconds"]) == set(PHASES)


def test_charging_without_an_open_account_does_nothing():
    assert time_account.current() is None
    with time_account.charge("compute"):
        pass

    @time_account.charged("writing")
    def write():
        return 3

    assert write() == 3


def test_an_account_is_per_thread_and_an_unknown_phase_is_refused():
    account = TimeAccount("step")
    seen = []
    with time_account.opened(account):
        with time_account.charge("writing"):
            time.sleep(0.02)
        thread = threading.Thread(target=lambda: seen.append(time_account.current()))
        thread.start()
        thread.join()
        with pytest.raises(ValueError, match="unknown phase"):
            with account.phase("lunch"):
                pass
    assert seen == [None] and time_account.current() is None
    assert account.record()["seconds"]["writing"] >= 0.02


def test_process_started_is_before_now():
    started = time_account.process_started()
    assert time.time() - 3600 < started <= time.time()


def test_fit_charges_training_test_predictions_and_diagnostics(tiny_ds):
    torch.manual_seed(0)
    schedule = ScheduleConfig(epochs=2, batch_size=16, lr=0.05)
    account = TimeAccount("train_student")

    def probe(model, epoch):
        time.sleep(0.02)
        return {}

    with time_account.opened(account):
        result = fit(build_model("mlp", tiny_ds.num_classes, 3, 8), build("ce"), tiny_ds, schedule, 0, AugmentConfig(),
                     diagnose=probe, log=lambda _: None)
    seconds = account.record()["seconds"]
    assert seconds["compute"] > 0 and seconds["evaluation"] > 0 and seconds["diagnostics"] >= 0.04
    for timing in result.timings:
        assert set(timing) == {"epoch", "train_seconds", "test_seconds", "diagnose_seconds"}
    assert seconds["compute"] == pytest.approx(sum(t["train_seconds"] for t in result.timings), rel=0.2, abs=0.02)
