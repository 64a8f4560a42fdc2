"""Triton device functions shared by the kernel families: an online log-sum-exp and an
overflow-free softplus.

Built from ``exp``/``log`` only (libdevice ``log1p`` is missing in Triton's CPU
interpreter). Importing this module imports triton.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _log1p(u):
    """log(1 + u) for u >= 0, exact to rounding also when 1 + u rounds to 1."""
    w = 1.0 + u
    d = w - 1.0
    return tl.where(d == 0.0, u, tl.log(w) * (u / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def softplus(x):
    return tl.maximum(x, 0.0) + _log1p(tl.exp(-tl.abs(x)))


@triton.jit
def online_lse(m, d, z):
    """One block of an online log-sum-exp over a row (masked lanes hold -inf).

    Returns the new running max and sum of ``exp(z - max)``, the factor the old
    sum was rescaled by (for other sums weighted by the same exponentials) and
    the block's exponentials. Until a finite value is seen the reference point is
    0, so an all-masked block gives no ``-inf - -inf``.
    """
    m_new = tl.maximum(m, tl.max(z, 0))
    m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)
    scale = tl.exp(m - m_ref)
    e = tl.exp(z - m_ref)
    return m_new, d * scale + tl.sum(e, 0), scale, e
