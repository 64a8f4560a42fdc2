"""kdlib.losses.uskd: USKD's terms against hand-computed cases and independent formulas.

References here are written per row with Python floats / explicit loops (not the
vectorised code under test): hand cases at C = 2..4, a per-row reference, the analytic
gradients, fp64 gradcheck where the loss is differentiable as a function (constants
fixed), invariances, and finite values and gradients at |logit| = 100.
"""
import math

import pytest
import torch

from kdlib.losses import uskd


def softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def uskd_reference(student, weak, target, nontarget_rank="official"):
    """USKD's terms row by row, from the definitions (docs/methods.md). The ranking key:
    "official" the code's (log-probabilities of the student, with its 1e-6), "paper" the
    probabilities (no 1e-6)."""
    rows = [(s.tolist(), w.tolist(), int(y)) for s, w, y in zip(student, weak, target)]
    s_y = [softmax(s)[y] for s, _, y in rows]
    mean_sq = sum(v * v for v in s_y) / len(rows)
    l_t = l_non = l_weak = 0.0
    for (s, w, y), sy in zip(rows, s_y):
        c = len(s)
        p_t = 1.0 + sy * sy - mean_sq
        l_t -= p_t * math.log(softmax(s)[y])
        ps, pw = softmax(s), softmax(w)
        others = [i for i in range(c) if i != y]
        if nontarget_rank == "official":
            lps = [math.log(v) for v in ps]
            key = {i: pw[i] / (1 - pw[y] + 1e-6) + lps[i] / (1 - lps[y] + 1e-6) for i in range(c)}
        else:
            key = {i: pw[i] / (1 - pw[y]) + ps[i] / (1 - ps[y]) for i in range(c)}
        ranked = sorted(range(c), key=lambda i: (-key[i], i))  # all C classes, target included
        total = sum(1 / (ranked.index(i) + 1) for i in others)
        zipf = {i: (1 / (ranked.index(i) + 1)) / total for i in others}
        s_hat = softmax([s[i] for i in others])
        l_non -= sum(zipf[i] * math.log(s_hat[j]) for j, i in enumerate(others))
        smooth = [0.1 / c + (0.9 if i == y else 0.0) for i in range(c)]
        l_weak -= sum(q * math.log(p) for q, p in zip(smooth, pw))
    n = len(rows)
    return l_t / n, l_non / n, l_weak / n


def test_uskd_uniform_logits_by_hand():
    c = 5
    s = torch.zeros(3, c)
    values = uskd.uskd_terms(s, torch.zeros(3, c), torch.tensor([0, 2, 4]))
    # s_y = 1/C everywhere: soft target exactly 1; every term is a uniform cross-entropy
    expected = (math.log(c), math.log(c - 1), math.log(c))
    for got, want in zip(values, expected):
        assert got.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("rank", ["official", "paper"])
def test_uskd_zipf_follows_the_combined_ranking(rank):
    """The keys below are the paper's (probabilities); the official key (log-probabilities of
    the student) orders these rows the same way."""
    y = torch.tensor([0])
    s = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
    log_s_hat = torch.log_softmax(torch.tensor([3.0, 2.0, 1.0]), 0)
    # weak head silent: classes 1 > 2 > 3 > target (its key 1/3 + 0.034 is the smallest)
    # -> Zipf 1, 1/2, 1/3 over 11/6
    _, l_non, _ = uskd.uskd_terms(s, torch.zeros(1, 4), y, rank)
    want = -(6 / 11 * log_s_hat[0] + 3 / 11 * log_s_hat[1] + 2 / 11 * log_s_hat[2])
    assert l_non.item() == pytest.approx(want.item(), rel=1e-6)
    # a weak head sure of class 3 moves it to rank 1: order 3, 1, 2
    _, l_non, _ = uskd.uskd_terms(s, torch.tensor([[0.0, -10.0, 0.0, 10.0]]), y, rank)
    want = -(3 / 11 * log_s_hat[0] + 2 / 11 * log_s_hat[1] + 6 / 11 * log_s_hat[2])
    assert l_non.item() == pytest.approx(want.item(), rel=1e-6)
    # a confident student ranks its target first (odds 0.976 / 0.024 ~ 40): the non-target
    # classes take ranks 2 and 3 -> Zipf 1/2, 1/3 over 5/6 = (0.6, 0.4), not (2/3, 1/3)
    _, l_non, _ = uskd.uskd_terms(torch.tensor([[5.0, 1.0, 0.0]]), torch.zeros(1, 3), y, rank)
    log_s_hat = torch.log_softmax(torch.tensor([1.0, 0.0]), 0)
    assert l_non.item() == pytest.approx(-(0.6 * log_s_hat[0] + 0.4 * log_s_hat[1]).item(), rel=1e-6)


def test_uskd_soft_target_is_batch_centred_squared_probability():
    # two rows, C = 2: s_y = sigmoid(a) and sigmoid(-b); the target term weights -log s_y
    a, b = 1.0, -0.5
    s = torch.tensor([[a, 0.0], [0.0, -b]])
    y = torch.tensor([0, 1])
    pa, pb = 1 / (1 + math.exp(-a)), 1 / (1 + math.exp(b))
    mean_sq = (pa**2 + pb**2) / 2
    want = -((1 + pa**2 - mean_sq) * math.log(pa) + (1 + pb**2 - mean_sq) * math.log(pb)) / 2
    l_t, l_non, _ = uskd.uskd_terms(s, torch.zeros(2, 2), y)
    assert l_t.item() == pytest.approx(want, rel=1e-6)
    assert l_non.item() == pytest.approx(0.0, abs=1e-7)  # one non-target class: Zipf puts 1 on it, log 1 = 0


@pytest.mark.parametrize("rank", ["official", "paper"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uskd_matches_the_row_reference(seed, rank):
    g = torch.Generator().manual_seed(seed)
    s, w = torch.randn(6, 7, generator=g, dtype=torch.float64) * 3, torch.randn(6, 7, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (6,), generator=g)
    got = uskd.uskd_terms(s, w, y, rank)
    for term, want in zip(got, uskd_reference(s, w, y, rank)):
        assert term.item() == pytest.approx(want, rel=1e-10)
    total = uskd.uskd_loss(s, w, y, 0.3, 0.5, 0.7, rank)
    assert total.item() == pytest.approx(0.3 * got[0].item() + 0.5 * got[1].item() + 0.7 * got[2].item(), rel=1e-12)
    if rank == "official":  # the default
        for a, b in zip(got, uskd.uskd_terms(s, w, y)):
            assert a.item() == b.item()


def test_uskd_the_two_ranking_keys_differ_in_the_zipf_term_only():
    """On random rows the keys order the non-target classes differently (L_non differs);
    L_target and L_weak do not depend on the key."""
    g = torch.Generator().manual_seed(0)
    s, w = torch.randn(6, 7, generator=g, dtype=torch.float64) * 3, torch.randn(6, 7, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (6,), generator=g)
    official, paper = uskd.uskd_terms(s, w, y, "official"), uskd.uskd_terms(s, w, y, "paper")
    assert official[0].item() == paper[0].item() and official[2].item() == paper[2].item()
    assert official[1].item() != pytest.approx(paper[1].item(), rel=1e-6)
    with pytest.raises(ValueError, match="nontarget_rank must be one of"):
        uskd.uskd_terms(s, w, y, "probabilities")


def test_uskd_gradients_analytic_and_gradcheck():
    g = torch.Generator().manual_seed(3)
    s = (torch.randn(4, 5, generator=g, dtype=torch.float64) * 2).requires_grad_()
    w = (torch.randn(4, 5, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = torch.tensor([0, 3, 1, 4])
    # target term: the soft target is a constant, so d/ds = -(1/N) p (onehot - softmax(s))
    l_t, _, _ = uskd.uskd_terms(s, w, y)
    (grad_s,) = torch.autograd.grad(l_t, s)
    with torch.no_grad():
        p_s = torch.softmax(s, 1)
        s_y = p_s[torch.arange(4), y]
        soft = 1 + s_y**2 - (s_y**2).mean()
        onehot = torch.nn.functional.one_hot(y, 5).double()
        torch.testing.assert_close(grad_s, -(soft[:, None] * (onehot - p_s)) / 4)
    # the Zipf term (ranks locally constant) and the weak term are plain functions: gradcheck them
    assert torch.autograd.gradcheck(lambda a, b: uskd.uskd_terms(a, b, y)[1], (s, w))
    assert torch.autograd.gradcheck(lambda a, b: uskd.uskd_terms(a, b, y)[2], (s, w))
    # the weak head is reached by L_weak only; the student by L_target and L_non only
    l_t, l_non, l_weak = uskd.uskd_terms(s, w, y)
    assert torch.autograd.grad(l_t + l_non, w, allow_unused=True)[0] is None
    assert torch.autograd.grad(l_weak, s, allow_unused=True)[0] is None


def test_uskd_is_shift_invariant_per_row():
    g = torch.Generator().manual_seed(4)
    s, w = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    y = torch.randint(0, 6, (5,), generator=g)
    shift = torch.randn(5, 1, generator=g) * 10
    torch.testing.assert_close(uskd.uskd_loss(s + shift, w - shift, y, 0.1, 0.1, 0.1), uskd.uskd_loss(s, w, y, 0.1, 0.1, 0.1))


def test_uskd_finite_at_logit_100():
    s = torch.tensor([[100.0, -100.0, 0.0, 50.0], [-100.0, 100.0, 100.0, -100.0]], requires_grad=True)
    w = torch.tensor([[-100.0, 100.0, 0.0, 0.0], [100.0, 100.0, -100.0, 0.0]], requires_grad=True)
    loss = uskd.uskd_loss(s, w, torch.tensor([0, 2]), 0.1, 0.1, 0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and torch.isfinite(w.grad).all()


def test_uskd_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="weak shape"):
        uskd.uskd_terms(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target must have shape"):
        uskd.uskd_terms(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        uskd.uskd_terms(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([0, 0]))
