"""DKD (kdlib.methods.dkd): the distillation term ramps up linearly over the warmup."""
import torch

from kdlib.losses.dkd import dkd_loss
from tests.helpers.methods import setup


def test_dkd_warmup_ramps_linearly():
    method, model, x, y, teacher = setup("dkd", warmup_epochs=4)
    model.eval()
    full = dkd_loss(model(x)[0], teacher, y, 1.0, 8.0, 4.0)
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)]:
        _, terms = method.forward_train(model, x, y, teacher, epoch)
        torch.testing.assert_close(terms["dkd"], factor * full)
