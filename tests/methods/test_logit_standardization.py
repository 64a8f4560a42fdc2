"""KD+LS and DKD+LS (kdlib.methods.logit_standardization): invariant to the teacher's shift
and scale; DKD+LS ramps its term and passes its settings to the loss."""
import torch

from kdlib.losses.dkd import dkd_loss
from kdlib.losses.logit_standardization import logit_standardize
from tests.helpers.methods import setup

LS = logit_standardize


def test_ls_methods_are_invariant_to_the_teachers_shift_and_scale():
    for name, term in (("kd+ls", "kd"), ("dkd+ls", "dkd")):
        method, model, x, y, teacher = setup(name)
        model.eval()
        _, a = method.forward_train(model, x, y, teacher, 30)
        _, b = method.forward_train(model, x, y, 5.0 * teacher + 7.0, 30)
        torch.testing.assert_close(a[term], b[term], rtol=1e-4, atol=1e-5)


def test_dkd_ls_warmup_ramps_and_settings_reach_the_loss():
    method, model, x, y, teacher = setup("dkd+ls", warmup_epochs=4, alpha=0.5, beta=2.0, temperature=3.0)
    model.eval()
    full = dkd_loss(LS(model(x)[0]), LS(teacher), y, 0.5, 2.0, 3.0)
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)]:
        _, terms = method.forward_train(model, x, y, teacher, epoch)
        torch.testing.assert_close(terms["dkd"], factor * full)
