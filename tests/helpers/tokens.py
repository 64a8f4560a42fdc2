"""Token batches for the language-model tests (ids, (B, T, V) logits, padding masks) and numpy
fp64 references of the per-token losses."""
from __future__ import annotations

import numpy as np
import torch


def token_ids(b: int, t: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """(B, T) int64 token ids drawn from a seeded generator (the global RNG is untouched)."""
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def token_logits(b: int, t: int, vocab: int, seed: int = 0, scale: float = 2.0, dtype=torch.float64) -> torch.Tensor:
    """(B, T, V) normal logits times `scale`."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, t, vocab, generator=g, dtype=torch.float64) * scale).to(dtype)


def padding_mask(lengths: list[int], t: int) -> torch.Tensor:
    """(B, T) bool mask: row i keeps its first `lengths[i]` positions (right padding)."""
    return torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


# --------------------------------------------------------------------------- #
# independent numpy fp64 references, one row at a time, from the definitions
# --------------------------------------------------------------------------- #


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def np_generalized_jsd(s: np.ndarray, t: np.ndarray, beta: float, T: float) -> float:
    """T^2 * mean over rows of beta KL(p_t || m) + (1 - beta) KL(p_s || m), m the beta-mixture;
    the forward / reverse KL at beta = 0 / 1."""
    rows = []
    for zs, zt in zip(s, t):
        ps, pt = _softmax(zs / T), _softmax(zt / T)
        if beta == 0.0:
            rows.append(np.sum(pt * np.log(pt / ps)))
        elif beta == 1.0:
            rows.append(np.sum(ps * np.log(ps / pt)))
        else:
            m = beta * pt + (1 - beta) * ps
            rows.append(beta * np.sum(pt * np.log(pt / m)) + (1 - beta) * np.sum(ps * np.log(ps / m)))
    return T * T * float(np.mean(rows))


def np_restricted_probs(t: np.ndarray, k: int) -> np.ndarray:
    """Probabilities of each row's top-k tokens kept, the rest of the mass shared equally."""
    out = np.zeros_like(t)
    for i, z in enumerate(t):
        p = _softmax(z)
        top = np.argsort(-z)[:k]
        rest = [j for j in range(len(z)) if j not in set(top)]
        out[i, top] = p[top]
        if rest:
            out[i, rest] = (1.0 - p[top].sum()) / len(rest)
    return out


def np_tail_kd(s: np.ndarray, t: np.ndarray, k: int, T: float) -> float:
    """T^2 * mean over rows of KL over the k top teacher tokens and one tail bucket."""
    rows = []
    for zs, zt in zip(s, t):
        ps, pt = _softmax(zs / T), _softmax(zt / T)
        top = np.argsort(-zt)[:k]
        bt = np.append(pt[top], 1.0 - pt[top].sum())
        bs = np.append(ps[top], 1.0 - ps[top].sum())
        keep = bt > 0
        rows.append(np.sum(bt[keep] * np.log(bt[keep] / bs[keep])))
    return T * T * float(np.mean(rows))


def lm_setup(name: str, vocab: int = 24, b: int = 2, t: int = 8, **settings):
    """(method, model, x, y, teacher): the method built as a study builds it on a `gpt_nano`
    student; x (B, T) ids, y the next tokens flattened to (B*T,), teacher logits (B*T, V)."""
    from kdlib.models import build_model
    from tests.helpers.methods import build

    torch.manual_seed(0)
    method = build(name, settings)
    model = method.build(build_model("gpt_nano", vocab, 1, t))
    seq = token_ids(b, t + 1, vocab, seed=3)
    teacher = token_logits(b, t, vocab, seed=4, scale=3.0, dtype=torch.float32).flatten(0, 1)
    return method, model, seq[:, :-1], seq[:, 1:].reshape(-1), teacher


def distil_steps(method, model, x, y, teacher, steps: int = 15, lr: float = 3e-3) -> list[float]:
    """The method's summed terms over `steps` AdamW steps on one batch, as `fit` sums them."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        _, terms = method.forward_train(model, x, y, teacher, 0)
        loss = sum(terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
