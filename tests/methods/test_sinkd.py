"""SinKD (kdlib.methods.sinkd): alpha splits CE and KD, beta weighs the Sinkhorn term."""
import pytest
import torch

from kdlib.losses.kd import kd_loss
from kdlib.losses.sinkd import sinkhorn_loss
from kdlib.methods.base import validate_method_entry
from tests.helpers.methods import setup


def test_sinkd_alpha_splits_ce_and_kd():
    method, model, x, y, teacher = setup("sinkd", alpha=0.25, beta=2.0, temperature=3.0, epsilon=0.5, iterations=5)
    model.eval()
    logits, terms = method.forward_train(model, x, y, teacher, 0)
    torch.testing.assert_close(terms["ce"], 0.75 * torch.nn.functional.cross_entropy(logits, y))
    torch.testing.assert_close(terms["kd"], 0.25 * kd_loss(logits, teacher, 3.0))
    torch.testing.assert_close(terms["sinkhorn"], 2.0 * sinkhorn_loss(logits, teacher, 3.0, 0.5, 5))
    with pytest.raises(ValueError, match=r"methods\.sinkd\.alpha"):
        validate_method_entry("sinkd", {"alpha": 1.5})
