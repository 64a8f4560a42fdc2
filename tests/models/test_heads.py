"""DualHead: a second head on the same feature, both losses reaching the backbone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlib.models import build_model
from kdlib.models.heads import DualHead


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_dual_head_outputs_and_identity(head: str) -> None:
    torch.manual_seed(0)
    base = build_model("resnet8", 10)
    dual = DualHead(base, head=head)
    assert dual.backbone_model is base
    assert dual.classifier is base.classifier
    assert dual.feature_dim == base.feature_dim
    # the original head must not be registered a second time
    keys = list(dual.state_dict())
    assert len(keys) == len(set(keys))
    assert not any(k.startswith("classifier.") for k in keys)

    out = dual(torch.randn(2, 3, 16, 16))
    assert isinstance(out, tuple) and len(out) == 3
    logits1, logits2, feature = out
    assert logits1.shape == (2, 10) and logits2.shape == (2, 10)
    assert feature.shape == (2, base.feature_dim)
    assert torch.equal(logits1, dual.classifier(feature))


def _grad_norm(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_dual_head_each_loss_reaches_backbone(head: str) -> None:
    torch.manual_seed(0)
    dual = DualHead(build_model("resnet8", 10), head=head)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    stem = dual.backbone_model.conv1

    for which in (0, 1):
        dual.zero_grad(set_to_none=True)
        logits = dual(x)[which]
        F.cross_entropy(logits, y).backward()
        assert _grad_norm(stem) > 0, f"head {which + 1} loss does not reach the backbone"
        heads = (dual.classifier, dual.aux_head)
        own, other = heads[which], heads[1 - which]
        assert _grad_norm(own) > 0
        assert _grad_norm(other) == 0


def test_dual_head_unknown_head() -> None:
    with pytest.raises(ValueError, match="linear.*mlp"):
        DualHead(build_model("resnet8", 10), head="conv")
