"""KD+LS and DKD+LS (kdlib.methods.logit_standardization): invariant to the teacher's shift
and scale; DKD+LS ramps its term and passes its settings to the loss; by default it is the LS
code's DKD+LS (alpha and beta times --kd-weight 9, T 2)."""
import torch
import torch.nn.functional as F

from kdlib.losses.dkd import dkd_loss
from kdlib.losses.logit_standardization import logit_standardize
from kdlib.methods.base import validate_method_entry
from tests.helpers.methods import build, setup
from tests.helpers.reference import labels, rand, t64

LS = logit_standardize


def test_ls_methods_are_invariant_to_the_teachers_shift_and_scale():
    for name, term in (("kd+ls", "kd"), ("dkd+ls", "dkd")):
        method, model, x, y, teacher = setup(name)
        model.eval()
        _, a = method.forward_train(model, x, y, teacher, 30)
        _, b = method.forward_train(model, x, y, 5.0 * teacher + 7.0, 30)
        torch.testing.assert_close(a[term], b[term], rtol=1e-4, atol=1e-5)


def test_dkd_ls_warmup_ramps_and_settings_reach_the_loss():
    # kd_weight 1: alpha and beta as given (kdflow's earlier convention)
    method, model, x, y, teacher = setup("dkd+ls", warmup_epochs=4, alpha=0.5, beta=2.0, temperature=3.0, kd_weight=1.0)
    model.eval()
    full = dkd_loss(LS(model(x)[0]), LS(teacher), y, 0.5, 2.0, 3.0)
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)]:
        _, terms = method.forward_train(model, x, y, teacher, epoch)
        torch.testing.assert_close(terms["dkd"], factor * full)
    method, model, x, y, teacher = setup("dkd+ls", warmup_epochs=4, alpha=0.5, beta=2.0, temperature=3.0, kd_weight=3.0)
    model.eval()
    _, terms = method.forward_train(model, x, y, teacher, 10)
    torch.testing.assert_close(terms["dkd"], dkd_loss(LS(model(x)[0]), LS(teacher), y, 1.5, 6.0, 3.0))


def official_dkd_ls(logits_student, logits_teacher, target, epoch):
    """The LS code's DKD distiller with --logit-stand --base-temp 2 --kd-weight 9 on mdistiller's
    DKD defaults (sunshangquan/logit-standardization-KD: tools/train.py:115-118, mdistiller/engine/
    cfg.py:163-168, mdistiller/distillers/DKD.py:7-39,79-88), restated; `epoch` counts from 1."""
    def normalize(logit):
        return (logit - logit.mean(dim=-1, keepdim=True)) / (1e-7 + logit.std(dim=-1, keepdim=True))

    alpha, beta, T, warmup = 1.0 * 9, 8.0 * 9, 2.0, 20
    s, t = normalize(logits_student), normalize(logits_teacher)
    gt = torch.zeros_like(s).scatter_(1, target.unsqueeze(1), 1).bool()
    p_s, p_t = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)

    def cat_mask(p):
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * ~gt).sum(1, keepdim=True)], dim=1)

    n = target.shape[0]
    tckd = F.kl_div(torch.log(cat_mask(p_s)), cat_mask(p_t), reduction="sum") * T**2 / n
    nckd = F.kl_div(F.log_softmax(s / T - 1000.0 * gt, dim=1), F.softmax(t / T - 1000.0 * gt, dim=1), reduction="sum") * T**2 / n
    return F.cross_entropy(logits_student, target) + min(epoch / warmup, 1.0) * (alpha * tckd + beta * nckd)


def test_dkd_ls_defaults_are_the_ls_codes_dkd_ls():
    s = validate_method_entry("dkd+ls", None)
    assert (s.ce_weight, s.alpha, s.beta, s.kd_weight, s.temperature, s.warmup_epochs) == (1.0, 1.0, 8.0, 9.0, 2.0, 20)
    method = build("dkd+ls")
    z = t64(rand(8, 7, 50, scale=3.0)).requires_grad_(True)
    teacher, y = t64(rand(8, 7, 51, scale=4.0)), torch.from_numpy(labels(8, 7, 50))
    for epoch in (0, 9, 30):  # kdflow counts epochs from 0, mdistiller from 1
        _, terms = method.forward_train(lambda _x: (z, z), None, y, teacher, epoch)
        got, ref = sum(terms.values()), official_dkd_ls(z, teacher, y, epoch + 1)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
        (g_got,) = torch.autograd.grad(got, z)
        (g_ref,) = torch.autograd.grad(ref, z)
        torch.testing.assert_close(g_got, g_ref, rtol=1e-9, atol=1e-12)
