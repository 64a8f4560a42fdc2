"""Every method at its DEFAULT settings against an independent restatement of its official
code (tests/helpers/official_losses.py, sources pinned there): every term's value and its
gradient w.r.t. the student's (and, where trained, the other heads') logits, float64, on
random inputs. Where kdflow's default differs from the official code, the difference is shown
to be exactly a named setting (set to the official value: equal), and the named kdflow
variant is shown to reproduce kdflow's earlier behaviour. No difference is left that is not a
setting (there is no `xfail` here).

Covered elsewhere: dhkd (test_dhkd.py, test_grad_align.py), dkd+ls
(test_logit_standardization.py), sinkd (tests/losses/test_sinkd.py), ldr
(tests/losses/test_ldr.py); reverse_kl and gkd have their own tests.
"""
from __future__ import annotations

import pytest
import torch

from kdlib.logit_cache import TeacherBatch
from kdlib.losses.multi_teacher_kd import entropy_balanced_temperatures
from kdlib.methods.base import build_method, method_names, validate_method_entry
from tests.helpers import official_losses as off
from tests.helpers.methods import setup

N, C, D = 8, 7, 5
RTOL, ATOL = 1e-10, 1e-12
DT = torch.float64


def build(name: str, raw: dict | None = None):
    return build_method(name, validate_method_entry(name, raw))


def rand(*shape, seed: int, scale: float = 3.0, grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=DT) * scale).requires_grad_(grad)


def labels(seed: int, n: int = N, c: int = C) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


def grads(term: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    if not term.requires_grad:
        return [torch.zeros_like(x) for x in leaves]
    out = torch.autograd.grad(term, leaves, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, out)]


def assert_terms_equal(got: dict, ref: dict, leaves: list[torch.Tensor], only: tuple[str, ...] | None = None):
    """Same term names; each term's value and gradient w.r.t. every leaf equal, then the total's."""
    assert set(got) == set(ref), (sorted(got), sorted(ref))
    names = only or tuple(ref)
    for name in names:
        torch.testing.assert_close(got[name], ref[name], rtol=RTOL, atol=ATOL, msg=lambda m: f"term {name}: {m}")
        for g_got, g_ref in zip(grads(got[name], leaves), grads(ref[name], leaves)):
            torch.testing.assert_close(g_got, g_ref, rtol=1e-9, atol=ATOL, msg=lambda m: f"d {name}: {m}")
    if only is None:
        for g_got, g_ref in zip(grads(sum(got.values()), leaves), grads(sum(ref.values()), leaves)):
            torch.testing.assert_close(g_got, g_ref, rtol=1e-9, atol=ATOL)


# --------------------------------------------------------------------------------------- #
# one case per method: (kdflow terms, official terms, leaves) at the defaults
# --------------------------------------------------------------------------------------- #
def one_head(name, teacher_kind="logits"):
    z, t, y = rand(N, C, seed=1, grad=True), rand(N, C, seed=2, scale=4.0), labels(3)
    _, terms = build(name).forward_train(lambda _x: (z, None), None, y, t, 30)
    return terms, z, t, y


def case_ce():
    terms, z, t, y = one_head("ce")
    return terms, {"ce": off.hard_ce(z, y)}, [z]  # mdistiller Vanilla, _base.py:51-54


def case_kd():
    terms, z, t, y = one_head("kd")
    return terms, off.mdistiller_kd(z, t, y), [z]


def case_kd_ls():
    terms, z, t, y = one_head("kd+ls")
    return terms, off.ls_kd(z, t, y), [z]


def case_dist():
    terms, z, t, y = one_head("dist")
    return terms, off.dist_official(z, t, y), [z]


def case_nkd():
    terms, z, t, y = one_head("nkd")
    return terms, off.nkd_official(z, t, y), [z]


def case_binarykl():
    terms, z, t, y = one_head("binarykl")
    return terms, {"binarykl": off.binary_kl_official(z, t, 2.0)}, [z]


def case_binarykl_norm():
    terms, z, t, y = one_head("binarykl_norm")
    return terms, {"binarykl_norm": off.binary_kl_norm_official(z, t, 2.0)}, [z]


def case_ce_binarykl():
    terms, z, t, y = one_head("ce+binarykl")
    return terms, {"ce": off.hard_ce(z, y), "binarykl": off.binary_kl_official(z, t, 2.0)}, [z]


def case_ce_binarykl_norm():
    terms, z, t, y = one_head("ce+binarykl_norm")
    return terms, {"ce": off.hard_ce(z, y), "binarykl_norm": off.binary_kl_norm_official(z, t, 2.0)}, [z]


def case_dhkd_kd():
    """Head 1: 0.1 CE + 0.9 KD (T 4); head 2: BinaryKLNorm (T 2), weight 1 (kdflow's variant of
    the official losses: the official code has --distill kd | dhkd only)."""
    h1, h2 = rand(N, C, seed=1, grad=True), rand(N, C, seed=4, grad=True)
    t, y = rand(N, C, seed=2, scale=4.0), labels(3)
    _, terms = build("dhkd_kd").forward_train(lambda _x: (h1, h2, None), None, y, t, 30)
    ref = {
        "ce": 0.1 * off.hard_ce(h1, y),
        "kd": 0.9 * off.distill_kl_sum(h1, t, 4.0),
        "aux_binarykl_norm": 1.0 * off.binary_kl_norm_official(h2, t, 2.0),
    }
    return terms, ref, [h1, h2]


def case_dkd(epoch):
    z, t, y = rand(N, C, seed=1, grad=True), rand(N, C, seed=2, scale=4.0), labels(3)
    _, terms = build("dkd").forward_train(lambda _x: (z, None), None, y, t, epoch)
    return terms, off.mdistiller_dkd(z, t, y, epoch + 1), [z]  # mdistiller counts epochs from 1


def case_uskd(raw: dict | None = None, rank_key: str = "official"):
    z, w, y = rand(N, C, seed=1, grad=True), rand(N, C, seed=5, grad=True), labels(3)
    _, terms = build("uskd", raw).forward_train(lambda _x: (z, w, None), None, y, None, 30)
    return terms, off.uskd_official(z, w, y, rank_key=rank_key), [z, w]


def nd_inputs():
    z, f = rand(N, C, seed=1, grad=True), rand(N, D, seed=6, grad=True)
    t, y = rand(N, C, seed=2, scale=4.0), labels(3)
    norms = rand(N, seed=7, scale=1.0).abs() * 3 + 0.5  # some above, some below ||f||
    centers = rand(C, D, seed=8, scale=1.0)
    return z, f, t, y, TeacherBatch(logits=t, feature_norms=norms, class_means=centers)


def case_kdpp(epoch, raw: dict | None = None, official_epoch: int | None = None):
    """kd++ at kdflow's `epoch` against the ND code at `official_epoch` (default: the same)."""
    z, f, t, y, tb = nd_inputs()
    _, terms = build("kd++", raw).forward_train(lambda _x: (z, f), None, y, tb, epoch)
    e = epoch if official_epoch is None else official_epoch
    return terms, off.kdpp_official(z, t, f, tb.feature_norms, tb.class_means, y, e), [z, f]


def case_dkdpp(epoch, raw: dict | None = None, official_epoch: int | None = None):
    z, f, t, y, tb = nd_inputs()
    _, terms = build("dkd++", raw).forward_train(lambda _x: (z, f), None, y, tb, epoch)
    e = epoch if official_epoch is None else official_epoch
    return terms, off.dkdpp_official(z, t, f, tb.feature_norms, tb.class_means, y, e), [z, f]


def sparse_inputs(k=3):
    z, t, y = rand(N, C, seed=1, grad=True), rand(N, C, seed=2, scale=4.0), labels(3)
    probs, idx = t.softmax(1).topk(k, dim=1)
    return z, y, TeacherBatch(topk_probs=probs, topk_indices=idx)


def case_sparse_kd_tinyvit_weights():
    """TinyViT trains on the soft target alone (main.py:93-97,330): ce_weight 0, kd_weight 1."""
    z, y, tb = sparse_inputs()
    _, terms = build("sparse_kd", {"ce_weight": 0.0, "kd_weight": 1.0}).forward_train(lambda _x: (z, None), None, y, tb, 30)
    return terms, {"ce": 0.0 * off.hard_ce(z, y), "sparse_kd": off.tinyvit_sparse_kd(z, tb.topk_probs, tb.topk_indices)}, [z]


def case_pld():
    terms, z, t, y = one_head("pld")
    return terms, {"pld": off.pld_paper(z, t, y, 4.0)}, [z]


def case_zloss_with_kdflow_eps():
    """No official code: the default is the paper's formula with kdflow's named guard `std_eps`
    1e-7 on the std; `std_eps: 0` is the paper's exactly (next case)."""
    terms, z, t, y = one_head("zloss")
    return terms, {"zloss": off.zloss_paper(z, y, 1.0, 5.0, std_eps=1e-7)}, [z]


def case_zloss_paper():
    z, y = rand(N, C, seed=1, grad=True), labels(3)
    _, terms = build("zloss", {"std_eps": 0.0}).forward_train(lambda _x: (z, None), None, y, None, 30)
    return terms, {"zloss": off.zloss_paper(z, y, 1.0, 5.0, std_eps=0.0)}, [z]


def mtard_case(raw: dict):
    z = rand(N, C, seed=1, grad=True)
    teachers = torch.stack([rand(N, C, seed=2, scale=4.0), rand(N, C, seed=9, scale=1.5)])
    y = labels(3)
    settings = {"teachers": ["teacher", "other"], **raw}
    _, terms = build("multi_teacher_kd", settings).forward_train(lambda _x: (z, None), None, y, teachers, 30)
    taus = entropy_balanced_temperatures(teachers, 1.0, 10.0)
    return terms, z, teachers, y, taus


def case_mtard_weights():
    """MTARD at its weights (no CE, the KL alone) and kdflow's temperatures (the fixed point of
    MTARD's steps, documented): the default reduction and eps are MTARD's. (Also documented and
    not equal by design: MTARD's temperatures step by +-0.001 from 1 per batch, lines 128-134,
    where kdflow solves their fixed point; the loss weights are stateful, lines 137-166; CE is
    kdflow's.)"""
    terms, z, teachers, y, taus = mtard_case({"ce_weight": 0.0, "kd_weight": 1.0})
    return terms, {"ce": 0.0 * off.hard_ce(z, y), "kd": off.mtard_kd(z, teachers, taus)}, [z]


def case_bdkd():
    z, zt, y = rand(N, C, seed=1, grad=True), rand(N, C, seed=2, scale=4.0, grad=True), labels(3)
    _, terms = build("bdkd").forward_train(lambda _x: (z, zt, None), None, y, None, 30)
    return terms, off.bdkd_documented(z, zt, y), [z, zt]


CASES = {
    "ce": case_ce,
    "kd": case_kd,
    "kd+ls": case_kd_ls,
    "dkd@epoch0": lambda: case_dkd(0),
    "dkd@epoch9": lambda: case_dkd(9),
    "dkd@epoch30": lambda: case_dkd(30),
    "dist": case_dist,
    "nkd": case_nkd,
    "binarykl": case_binarykl,
    "binarykl_norm": case_binarykl_norm,
    "ce+binarykl": case_ce_binarykl,
    "ce+binarykl_norm": case_ce_binarykl_norm,
    "dhkd_kd": case_dhkd_kd,
    "kd++@epoch0": lambda: case_kdpp(0),
    "kd++@epoch9": lambda: case_kdpp(9),
    "kd++@epoch30": lambda: case_kdpp(30),
    "dkd++@epoch0": lambda: case_dkdpp(0),
    "dkd++@epoch9": lambda: case_dkdpp(9),
    "dkd++@epoch30": lambda: case_dkdpp(30),
    "uskd": case_uskd,
    "multi_teacher_kd[ce_weight=0,kd_weight=1]": lambda: case_mtard_weights(),
    "sparse_kd[ce_weight=0,kd_weight=1]": case_sparse_kd_tinyvit_weights,
    "pld(paper)": case_pld,
    "zloss(paper+1e-7)": case_zloss_with_kdflow_eps,
    "zloss[std_eps=0](paper)": lambda: case_zloss_paper(),
    "bdkd(documented)": case_bdkd,
}


@pytest.mark.parametrize("case", list(CASES))
def test_default_terms_and_gradients_equal_the_official_code(case):
    got, ref, leaves = CASES[case]()
    assert_terms_equal(got, ref, leaves)


# --------------------------------------------------------------------------------------- #
# defaults that differ from the official code by a named setting
# --------------------------------------------------------------------------------------- #
def test_sparse_kd_default_is_tinyvits_term_under_kds_weights():
    """Default ce_weight 0.1, kd_weight 0.9 (KD's split); TinyViT's is 0 / 1 (case above). The
    default's terms are exactly those weights on CE and on TinyViT's soft-target CE."""
    z, y, tb = sparse_inputs()
    _, terms = build("sparse_kd").forward_train(lambda _x: (z, None), None, y, tb, 30)
    ref = {"ce": 0.1 * off.hard_ce(z, y), "sparse_kd": 0.9 * off.tinyvit_sparse_kd(z, tb.topk_probs, tb.topk_indices)}
    assert_terms_equal(terms, ref, [z])
    assert not torch.allclose(sum(terms.values()), off.tinyvit_sparse_kd(z, tb.topk_probs, tb.topk_indices))


def test_binarykl_clamp_is_inactive_on_the_test_inputs():
    """The official 1e-8 clamps (BinaryKL.py:17-18, BinaryKLNorm.py:16) never bind at |x/T| < 18:
    the equalities above are not luck of the clamp (documented in docs/methods.md)."""
    z, t = rand(N, C, seed=1), rand(N, C, seed=2, scale=4.0)
    assert (z / 2).abs().max() < 18 and (t / 2).abs().max() < 18 and ((z - t) / 2).abs().max() < 18


# --------------------------------------------------------------------------------------- #
# the named kdflow variants reproduce kdflow's earlier behaviour
# --------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("name,epoch", [("kd++", 0), ("kd++", 9), ("kd++", 19), ("dkd++", 0), ("dkd++", 9), ("dkd++", 19)])
def test_nd_warmup_one_epoch_ahead_is_the_nd_code_one_epoch_later(name, epoch):
    """`warmup_start: one_epoch_ahead` (kdflow's ramp before the setting, mdistiller's
    `(epoch + 1) / 20`) at epoch e is the ND code at epoch e + 1: every term and gradient."""
    case = case_kdpp if name == "kd++" else case_dkdpp
    got, ref, leaves = case(epoch, {"warmup_start": "one_epoch_ahead"}, official_epoch=epoch + 1)
    assert_terms_equal(got, ref, leaves)


@pytest.mark.parametrize("name", ["kd++", "dkd++"])
def test_nd_warmup_start_changes_the_ramp_only_during_the_warmup(name):
    case, term = (case_kdpp, "kd") if name == "kd++" else (case_dkdpp, "dkd")
    first, _, _ = case(0)
    assert first[term].item() == 0.0  # the ND code's: no logit term in the first epoch
    ahead, _, _ = case(0, {"warmup_start": "one_epoch_ahead"})
    full, _, _ = case(30)
    assert full[term].item() != 0.0
    torch.testing.assert_close(ahead[term], full[term] / 20, rtol=RTOL, atol=ATOL)
    late, _, _ = case(25, {"warmup_start": "one_epoch_ahead"})
    torch.testing.assert_close(late[term], full[term], rtol=RTOL, atol=ATOL)


def test_uskd_paper_rank_is_the_official_arithmetic_with_the_specifications_ranking_key():
    """`nontarget_rank: paper` (kdflow's key before the setting): the Zipf term equals the
    official arithmetic with the key read as probabilities (its 1e-6 does not change the order
    here), the other terms equal the code's; and on these inputs the two keys give different
    Zipf terms, so the setting is not idle."""
    got, ref, leaves = case_uskd({"nontarget_rank": "paper"}, rank_key="probabilities")
    assert_terms_equal(got, ref, leaves)
    default, official, _ = case_uskd()
    assert not torch.allclose(got["uskd_non_target"], official["uskd_non_target"], rtol=1e-6, atol=0)
    for name in ("ce", "uskd_target", "uskd_weak"):
        torch.testing.assert_close(got[name], default[name], rtol=0, atol=0)


def test_multi_teacher_kd_batchmean_without_eps_is_c_times_mtards_reduction_without_its_eps():
    """`kd_reduction: batchmean, target_log_eps: 0` (kdflow's term before the settings) equals C x
    MTARD's element mean with the 1e-5 dropped (equal teacher weights 1/K, the temperatures
    given), values and gradients."""
    old = {"kd_reduction": "batchmean", "target_log_eps": 0.0}
    terms, z, teachers, y, taus = mtard_case({"ce_weight": 0.0, "kd_weight": 1.0, **old})
    log_ps = off._log_softmax(z)
    no_eps = sum(
        0.5 * (teachers[i].div(float(taus[i])).softmax(1) * (teachers[i].div(float(taus[i])).log_softmax(1) - log_ps)).mean()
        for i in range(2)
    )
    assert_terms_equal(terms, {"ce": 0.0 * off.hard_ce(z, y), "kd": C * no_eps}, [z])
    # and the weights: ce_weight 0.1 CE + kd_weight 0.9 of that term
    d_terms, *_ = mtard_case(old)
    torch.testing.assert_close(d_terms["kd"], 0.9 * terms["kd"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(d_terms["ce"], 0.1 * off.hard_ce(z, y), rtol=RTOL, atol=ATOL)


def test_multi_teacher_kd_default_is_mtards_reduction_under_kds_weights():
    """The default: ce_weight 0.1 CE + kd_weight 0.9 of MTARD's kl term (its reduction and eps);
    the eps moves the value only, not the gradient; batchmean alone is C times the mean."""
    terms, z, teachers, y, taus = mtard_case({})
    ref = {"ce": 0.1 * off.hard_ce(z, y), "kd": 0.9 * off.mtard_kd(z, teachers, taus)}
    assert_terms_equal(terms, ref, [z])
    no_eps, z_no_eps, *_ = mtard_case({"target_log_eps": 0.0})
    assert not torch.allclose(no_eps["kd"], terms["kd"], rtol=1e-9, atol=0)
    (g_eps,), (g_no,) = grads(terms["kd"], [z]), grads(no_eps["kd"], [z_no_eps])
    assert g_eps.abs().sum() > 0
    torch.testing.assert_close(g_eps, g_no, rtol=1e-9, atol=ATOL)
    summed, *_ = mtard_case({"kd_reduction": "batchmean"})
    torch.testing.assert_close(summed["kd"], C * terms["kd"], rtol=RTOL, atol=ATOL)


def test_zloss_std_eps_default_is_kdflows_guard():
    """`std_eps` 1e-7 (default, kdflow's) differs from the paper's 0 by ~1e-7 / std relative on
    these rows; at a constant row the paper's 0 / 0 is NaN, the guard gives z = 0."""
    d, _, _ = case_zloss_with_kdflow_eps()
    p, _, _ = case_zloss_paper()
    torch.testing.assert_close(d["zloss"], p["zloss"], rtol=1e-6, atol=0)
    assert d["zloss"].item() != p["zloss"].item()
    flat = torch.zeros(2, C, dtype=DT)
    y = torch.tensor([0, 1])
    _, guarded = build("zloss").forward_train(lambda _x: (flat, None), None, y, None, 0)
    _, paper = build("zloss", {"std_eps": 0.0}).forward_train(lambda _x: (flat, None), None, y, None, 0)
    assert torch.isfinite(guarded["zloss"]) and torch.isnan(paper["zloss"])


# --------------------------------------------------------------------------------------- #
# dhkd_kd: the default gradient alignment on a real two-head model, every parameter
# --------------------------------------------------------------------------------------- #
def test_dhkd_kd_default_backward_equals_the_official_grad_align_on_a_model():
    method, model, x, y, teacher = setup("dhkd_kd")
    model = model.double().eval()  # eval: dropout off, so both passes see the same network
    x, teacher = x.double(), teacher.double()
    params = [p for p in model.parameters() if p.requires_grad]
    _, terms = method.forward_train(model, x, y, teacher, 30)
    method.backward(model, terms)
    got = [p.grad.clone() for p in params]
    head1, head2, _ = model(x)
    objectives = [  # the official list order: the CE term first (loops.py:124)
        0.1 * off.hard_ce(head1, y),
        0.9 * off.distill_kl_sum(head1, teacher, 4.0),
        1.0 * off.binary_kl_norm_official(head2, teacher, 2.0),
    ]
    ref = off.official_grad_align(objectives, params)
    for g_got, g_ref in zip(got, ref):
        torch.testing.assert_close(g_got, g_ref, rtol=1e-9, atol=1e-12)
    assert any(g.abs().sum() > 0 for g in got)


def test_every_method_is_checked_here_or_elsewhere():
    here = {"ce", "kd", "kd+ls", "dkd", "dist", "nkd", "binarykl", "binarykl_norm", "ce+binarykl",
            "ce+binarykl_norm", "dhkd_kd", "kd++", "dkd++", "sparse_kd", "pld", "zloss", "bdkd", "uskd",
            "multi_teacher_kd"}
    elsewhere = {"dhkd", "dkd+ls", "sinkd", "ldr", "reverse_kl", "gkd"}
    assert set(method_names()) <= here | elsewhere, set(method_names()) - here - elsewhere
