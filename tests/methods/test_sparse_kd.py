"""Sparse KD (kdlib.methods.sparse_kd): soft CE against the top-K reconstruction (TinyViT)."""
import torch

from kdlib.logit_cache import TeacherBatch
from kdlib.losses.kd import kd_loss
from tests.helpers.methods import setup_cache_reader, teacher_batch


def reconstruct_by_hand(probs, idx, c):
    """The spec: top-K values in place, the remaining mass spread evenly over the other C - K."""
    rows = []
    for p_row, i_row in zip(probs.tolist(), idx.tolist()):
        rest = (1 - sum(p_row)) / (c - len(p_row))
        row = [rest] * c
        for p, i in zip(p_row, i_row):
            row[i] = p
        rows.append(row)
    return torch.tensor(rows)


def test_sparse_kd_term_is_soft_ce_against_the_reconstruction():
    method, model, x, y = setup_cache_reader("sparse_kd", ce_weight=0.3, kd_weight=2.0)
    t = teacher_batch()
    logits, terms = method.forward_train(model, x, y, TeacherBatch(topk_probs=t.topk_probs, topk_indices=t.topk_indices), 0)
    target = reconstruct_by_hand(t.topk_probs, t.topk_indices, 10)
    torch.testing.assert_close(target.sum(1), torch.ones(6))
    soft_ce = -(target * logits.detach().log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(terms["sparse_kd"].detach(), 2.0 * soft_ce)
    torch.testing.assert_close(terms["ce"].detach(), 0.3 * torch.nn.functional.cross_entropy(logits.detach(), y))


def test_sparse_kd_with_k_equal_c_is_dense_kd_at_t1():
    """K = C loses nothing: the term is the soft CE against the full teacher softmax, i.e.
    KD at T = 1 plus the teacher's entropy (a constant)."""
    method, model, x, y = setup_cache_reader("sparse_kd", ce_weight=0.0, kd_weight=1.0)
    t = teacher_batch(k=10)
    logits, terms = method.forward_train(model, x, y, TeacherBatch(topk_probs=t.topk_probs, topk_indices=t.topk_indices), 0)
    p_t = t.logits.softmax(1)
    entropy = -(p_t * p_t.log()).sum(1).mean()
    torch.testing.assert_close(terms["sparse_kd"].detach(), kd_loss(logits.detach(), t.logits, 1.0) + entropy)
