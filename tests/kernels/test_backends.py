"""The backend choice (`runtime.kernels`): resolved once (`kdlib.kernels.utils.resolve_backend`),
then each method swaps in the kernels of its own loss families; errors name the field."""
from __future__ import annotations

import pytest
import torch

from kdlib.kernels import binary_kl as binary_kl_kernel
from kdlib.kernels import dkd as dkd_kernel
from kdlib.kernels import kd as kd_kernel
from kdlib.kernels import sparse_kd as sparse_kd_kernel
from kdlib.kernels.utils import resolve_backend
from kdlib.losses import ce, kd
from kdlib.methods.base import method_names
from tests.helpers.kernels import CUDA, DEV, ROWS, labels, logits
from tests.helpers.methods import build

# the interpreter runs on numpy, which warns about values computed in masked lanes
# (-inf - -inf) or in the branch a tl.where discards (exp overflow in sigmoid)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

SETTINGS = {"multi_teacher_kd": {"teachers": ["teacher", "other"]}}
"""The methods that have no default for a setting."""


def test_a_method_swaps_in_the_kernels_of_its_families():
    ref = build("kd")
    ref.use_kernels("torch", "cpu")
    assert ref.backend == "torch" and ref.loss(kd.kd_loss) is kd.kd_loss and ref.loss(ce.cross_entropy) is ce.cross_entropy
    auto = build("kd")
    auto.use_kernels("auto", DEV)
    assert auto.backend == ("triton" if CUDA else "torch")
    fused = build("kd")
    fused.use_kernels("triton", DEV)
    assert fused.backend == "triton" and fused.loss(ce.cross_entropy) is ce.cross_entropy
    s, t = logits(ROWS, 7, 42), logits(ROWS, 7, 43)
    torch.testing.assert_close(fused.loss(kd.kd_loss)(s, t, 2.0), kd.kd_loss(s, t, 2.0))
    # each kernel a method declares is the twin of its reference (same family stem, same
    # name), and every kernelled loss a method calls is swapped in
    swapped = set()
    for name in method_names():
        method = build(name, SETTINGS.get(name))
        for reference, kernel in method.kernels().items():
            assert reference.__module__.replace("kdlib.losses.", "kdlib.kernels.") == kernel.__module__, name
            assert reference.__name__ == kernel.__name__, name
            swapped.add(kernel.__name__)
        method.use_kernels("triton", DEV)
        for reference, kernel in method.kernels().items():
            assert method.loss(reference).func is kernel and method.loss(reference).keywords == {"backend": "triton"}
    assert swapped == {"kd_loss", "binary_kl_loss", "binary_kl_norm_loss", "dkd_loss", "sparse_kd_loss"}


def test_auto_and_torch_backends_are_the_reference_on_cpu():
    s, t = logits(ROWS, 7, 44).cpu(), logits(ROWS, 7, 45).cpu()
    for backend in ("auto", "torch"):
        assert torch.equal(kd_kernel.kd_loss(s, t, 2.0, backend=backend), kd.kd_loss(s, t, 2.0))
        assert resolve_backend(backend, "cpu") == "torch"


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", "cpu")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        build("dhkd").use_kernels("triton", "cpu")
    with pytest.raises(ValueError, match="backend 'triton' cannot run on device 'cpu'"):
        kd_kernel.kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 1.0, backend="triton")


def test_bad_arguments_name_the_field():
    s = logits(2, 5, 46)
    with pytest.raises(ValueError, match="backend must be one of"):
        kd_kernel.kd_loss(s, s, 1.0, backend="cuda")
    with pytest.raises(ValueError, match="runtime.kernels must be one of"):
        resolve_backend("fast", "cpu")
    with pytest.raises(ValueError, match="teacher shape"):
        kd_kernel.kd_loss(s, s[:, :4], 1.0, backend="triton")
    with pytest.raises(ValueError, match="temperature"):
        binary_kl_kernel.binary_kl_loss(s, s, 0.0, backend="triton")
    with pytest.raises(ValueError, match="at least 2 classes"):
        dkd_kernel.dkd_loss(s[:, :1], s[:, :1], labels(2, 1, 0), 1.0, 1.0, 1.0, backend="triton")
    with pytest.raises(ValueError, match="target"):
        kd_kernel.ce_kd_loss(s, s, labels(3, 5, 0), 1.0, 1.0, 1.0, backend="triton")
    with pytest.raises(ValueError, match="topk_indices"):
        sparse_kd_kernel.sparse_kd_loss(s, s[:, :2], s[:, :2], backend="triton")
