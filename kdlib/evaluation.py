"""What a trained model scores on a data set's held-out splits, images or tokens alike.

Image studies score the test split. Token studies score it too, one row per position (token
accuracy as `top1`), and add the perplexities of the test and validation windows: language
models are compared by validation perplexity.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from kdlib.data.dataset import AnyDataset
from kdlib.metrics import evaluate_logits, nll
from kdlib.train import predict


def perplexity(nll: float) -> float:
    """exp of the mean per-token negative log-likelihood (nats)."""
    return math.exp(nll)


def evaluate_model(model: nn.Module, ds: AnyDataset, ece_bins: int = 15) -> tuple[dict[str, float], Tensor]:
    """(the test metrics of `kdlib.metrics.evaluate_logits`, plus `ppl` and `val_ppl` for tokens;
    the test logits they came from)."""
    test_logits = predict(model, ds.x_test, ds)
    metrics = evaluate_logits(test_logits, ds.rows(ds.y_test), None, ece_bins)
    if ds.kind == "tokens":
        val_logits = predict(model, ds.x_val, ds)
        metrics["ppl"] = perplexity(metrics["nll"])
        metrics["val_nll"] = nll(val_logits, ds.rows(ds.y_val))
        metrics["val_ppl"] = perplexity(metrics["val_nll"])
    return metrics, test_logits
