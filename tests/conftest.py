"""Shared fixtures: a tiny data set, one thread per test, CUDA-only tests skipped without CUDA (the tiny
study config is tests/helpers/study.py)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use one thread: on a loaded 2-core machine oversubscription is far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_ds():
    from kdlib.data.sources.synthetic import make_synthetic

    return make_synthetic(seed=0, num_train_per_class=4, num_test_per_class=2, image_size=8, num_classes=10, num_superclasses=2)


def pytest_collection_modifyitems(config, items):
    """Files with end-to-end (`slow`) tests run first, each file's tests in their order: with
    `-n 2 --dist loadfile` the long files then start early instead of leaving one worker alone
    at the end. Tests marked `cuda` are skipped where no CUDA device is available."""
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file keeps its order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
