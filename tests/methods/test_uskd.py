"""USKD (kdlib.methods.uskd): the weak head on an intermediate stage, the terms, where each
gradient goes, and the export without the weak head."""
import pytest
import torch
import torch.nn.functional as F

from kdlib.losses.uskd import uskd_terms
from kdlib.models import ARCHS, TOKEN_ARCHS, build_model
from kdlib.models.heads import DualHead, WeakHead
from tests.helpers.methods import build


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in TOKEN_ARCHS])  # image archs: a stage to pool
def test_weak_head_fits_every_arch(arch):
    model = WeakHead(build_model(arch, 10, 3, 8))
    logits, weak, feature = model(torch.randn(2, 3, 8, 8))
    assert logits.shape == weak.shape == (2, 10) and feature.shape == (2, model.backbone_model.feature_dim)
    assert not model.backbone_model.get_submodule(model.stage_name)._forward_hooks  # the hook is gone


def test_weak_head_reads_the_pooled_second_to_last_stage():
    torch.manual_seed(0)
    net = build_model("resnet8", 10, 3, 8).eval()
    model = WeakHead(net).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        mid = net.layer2(net.layer1(F.relu(net.bn1(net.conv1(x)))))
        logits, weak, _ = model(x)
        torch.testing.assert_close(weak, model.weak_head(mid.mean(dim=(2, 3))))
        torch.testing.assert_close(logits, net(x)[0])
    assert model.weak_head.in_features == 32


def test_weak_head_refuses_an_unknown_model():
    with pytest.raises(TypeError, match="no intermediate stage known for DualHead"):
        WeakHead(DualHead(build_model("mlp", 10, 1, 8)))


def test_uskd_terms_heads_and_export():
    torch.manual_seed(0)
    method = build("uskd", {"alpha": 0.2, "beta": 0.3, "mu": 0.4, "ce_weight": 0.5})
    model = method.build(build_model("mlp", 10, 1, 8)).eval()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    logits, terms = method.forward_train(model, x, y, None, 0)
    assert set(terms) == {"ce", "uskd_target", "uskd_non_target", "uskd_weak"}
    with torch.no_grad():
        ref_logits, weak, _ = model(x)
    l_t, l_non, l_weak = uskd_terms(ref_logits, weak, y)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(terms["ce"], 0.5 * F.cross_entropy(ref_logits, y))
    torch.testing.assert_close(terms["uskd_target"], 0.2 * l_t)
    torch.testing.assert_close(terms["uskd_non_target"], 0.3 * l_non)
    torch.testing.assert_close(terms["uskd_weak"], 0.4 * l_weak)
    # the weak head learns from its own term only; the final head never from it
    model.zero_grad()
    terms["uskd_weak"].backward(retain_graph=True)
    assert model.classifier.weight.grad is None
    assert model.weak_head.weight.grad.abs().sum() > 0 and model.backbone_model.body[1].weight.grad.abs().sum() > 0
    model.zero_grad()
    (terms["ce"] + terms["uskd_target"] + terms["uskd_non_target"]).backward()
    assert model.weak_head.weight.grad is None
    exported = method.exported(model)
    assert exported is model.backbone_model
    build_model("mlp", 10, 1, 8).load_state_dict(exported.state_dict())  # strict: no weak head inside
