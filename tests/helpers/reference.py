"""Independent numpy fp64 references, written from the definitions in docs/methods.md,
and the random inputs the loss and kernel tests feed them."""
from __future__ import annotations

import numpy as np
import torch


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def np_kd(s: np.ndarray, t: np.ndarray, T: float) -> float:
    lps, lpt = np_log_softmax(s / T), np_log_softmax(t / T)
    return T * T * float(np.mean(np.sum(np.exp(lpt) * (lpt - lps), axis=1)))


def np_tckd_nckd(s: np.ndarray, t: np.ndarray, y: np.ndarray, T: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-row TCKD and NCKD straight from the DKD definitions (probabilities, np.delete)."""
    tckd, nckd = [], []
    for i in range(s.shape[0]):
        ps, pt = np_softmax(s[i] / T), np_softmax(t[i] / T)
        bs = np.array([ps[y[i]], 1.0 - ps[y[i]]])
        bt = np.array([pt[y[i]], 1.0 - pt[y[i]]])
        tckd.append(np.sum(bt * np.log(bt / bs)))
        hs = np_softmax(np.delete(s[i], y[i]) / T)
        ht = np_softmax(np.delete(t[i], y[i]) / T)
        nckd.append(np.sum(ht * np.log(ht / hs)))
    return np.array(tckd), np.array(nckd)


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def np_binary_kl(s: np.ndarray, t: np.ndarray, T: float) -> float:
    q, p = np_sigmoid(t / T), np_sigmoid(s / T)
    elem = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
    return T * T * float(np.mean(elem.sum(axis=1)))


def rand_case(n: int = 5, c: int = 7, seed: int = 0, scale: float = 3.0):
    """(student, teacher, target) as numpy arrays."""
    g = np.random.default_rng(seed)
    s = g.normal(size=(n, c)) * scale
    t = g.normal(size=(n, c)) * scale
    y = g.integers(0, c, size=n)
    return s, t, y


def tt(a, dtype=torch.float64, requires_grad=False) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=dtype, requires_grad=requires_grad)


def t64(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def rand(n, c, seed, scale=2.0):
    return np.random.default_rng(seed).normal(size=(n, c)) * scale


def labels(n, c, seed):
    return np.random.default_rng(seed + 1000).integers(0, c, size=n)
