"""`runtime.kernels` end to end: a method computes the same terms and gradients on either
backend, and train_student trains through the kernels (the same weights as with torch)."""
from __future__ import annotations

import pytest
import torch

from tests.helpers.kernels import CUDA
from tests.helpers.methods import setup

# the interpreter runs on numpy, which warns about values computed in masked lanes
# (-inf - -inf) or in the branch a tl.where discards (exp overflow in sigmoid)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


@pytest.mark.parametrize("name, settings", [(m, {}) for m in [
    "kd", "binarykl", "binarykl_norm", "ce+binarykl", "ce+binarykl_norm", "dhkd", "dhkd_kd", "dkd", "kd+ls", "dkd+ls", "sinkd"
]] + [("dhkd", {"grad_align": "shared"}), ("dhkd_kd", {"grad_align": "shared"})])
def test_methods_compute_their_terms_with_the_kernels(name, settings):
    """`Method.use_kernels('triton', ...)`: the same named terms and parameter gradients as the reference
    (through the method's own backward, so DHKD's per-term grad_align projection too)."""
    results = []
    for backend in ("torch", "triton"):
        method, model, x, y, teacher = setup(name, **settings)
        method.use_kernels(backend, "cpu")
        assert method.backend == backend
        _, terms = method.forward_train(model, x, y, teacher, epoch=5)
        method.backward(model, terms)
        results.append((terms, [p.grad for p in model.parameters() if p.grad is not None]))
    (terms_ref, grads_ref), (terms_k, grads_k) = results
    assert terms_ref.keys() == terms_k.keys()
    for key in terms_ref:
        torch.testing.assert_close(terms_k[key], terms_ref[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_k, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def kd_upstream(tmp_path_factory):
    """A tiny study's data and teacher logits, for train_student with each backend."""
    import copy

    from kdlib.config import parse_config
    from tasks import cache_logits, prepare_data, train_teacher
    from tests.helpers.study import TINY_STUDY

    root = tmp_path_factory.mktemp("kernels")
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"].update(methods=["kd"], schedule={"epochs": 1, "batch_size": 128, "lr": 0.05})
    raw["teacher"]["arch"] = "mlp"  # any teacher will do; the student's loss path is what is tested
    raw["tracking"]["enabled"] = False
    raw["runtime"]["store"] = str(root / "store")
    data = prepare_data.run(parse_config(raw), root / "data")
    teacher = train_teacher.run(parse_config(raw), data, root / "teacher")
    logits = cache_logits.run(parse_config(raw), data, teacher, root / "logits")
    return raw, data, logits, root


@pytest.mark.skipif(CUDA, reason="checks the CPU interpreter path")
def test_train_student_uses_runtime_kernels(kd_upstream, monkeypatch):
    """runtime.kernels: triton trains the student through the kernel (same weights as torch); without the
    interpreter it fails before training."""
    import copy

    import kdlib.kernels.kd as kd_file
    from kdlib.config import parse_config
    from tasks import train_student

    raw, data, logits, root = kd_upstream
    launches = []
    real = kd_file.kd_forward
    monkeypatch.setattr(kd_file, "kd_forward", lambda *a, **k: launches.append(1) or real(*a, **k))
    weights = {}
    for backend in ("torch", "triton"):
        cfg_raw = copy.deepcopy(raw)
        cfg_raw["runtime"]["kernels"] = backend
        student = train_student.run(parse_config(cfg_raw), "kd", 0, data, logits, root / backend)
        assert "failed" not in student["meta"]
        weights[backend] = train_student.load_student(parse_config(cfg_raw), data, student).state_dict()
        assert (len(launches) > 0) == (backend == "triton")
    for name, w in weights["torch"].items():
        torch.testing.assert_close(weights["triton"][name], w, rtol=1e-4, atol=1e-5)
    monkeypatch.delenv("TRITON_INTERPRET")
    cfg_raw = copy.deepcopy(raw)
    cfg_raw["runtime"]["kernels"] = "triton"
    with pytest.raises(ValueError, match="backend 'triton' cannot run on device 'cpu'"):
        train_student.run(parse_config(cfg_raw), "kd", 0, data, logits, root / "no-interpreter")


def test_runtime_kernels_setting():
    from kdlib.config import RuntimeConfig

    assert RuntimeConfig(kernels="triton").kernels == "triton"
    with pytest.raises(ValueError, match="kernels"):
        RuntimeConfig(kernels="cuda")
