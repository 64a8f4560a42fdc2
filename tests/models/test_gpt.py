"""The decoder-only family (kdlib.models.gpt): positions as rows, causality, the head contract,
parameter counts, DualHead on an LM head, and that it learns a repeated sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlib.models import ARCHS, TOKEN_ARCHS, build_model, count_parameters, forward_error
from kdlib.models.gpt import GPT, SIZES
from kdlib.models.heads import DualHead
from tests.helpers.tokens import token_ids

VOCAB, CONTEXT = 4096, 256


def expected_parameters(vocab: int, context: int, n_layer: int, n_embd: int) -> int:
    """Embeddings + blocks + final LayerNorm + untied head, counted layer by layer."""
    d = n_embd
    block = (2 * d) + (3 * d * d + 3 * d) + (d * d + d) + (2 * d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return vocab * d + context * d + n_layer * block + 2 * d + d * vocab


def test_the_token_archs_are_registered_under_their_names():
    assert TOKEN_ARCHS == {"gpt_nano", "gpt_micro", "gpt_mini", "gpt_small"}
    assert TOKEN_ARCHS <= set(ARCHS)
    assert SIZES["gpt_nano"][0::2] == (1, 64) and SIZES["gpt_micro"][0::2] == (2, 96)
    assert SIZES["gpt_mini"][0::2] == (4, 128)


@pytest.mark.parametrize(
    "arch, count",
    [("gpt_nano", 590_784), ("gpt_micro", 1_034_880), ("gpt_mini", 1_874_688), ("gpt_small", 4_291_584)],
)
def test_parameter_count_of_each_size(arch, count):
    n_layer, _, n_embd = SIZES[arch]
    model = build_model(arch, VOCAB, 1, CONTEXT)
    assert count_parameters(model) == count == expected_parameters(VOCAB, CONTEXT, n_layer, n_embd)


@pytest.mark.parametrize("arch", sorted(TOKEN_ARCHS))
def test_forward_returns_one_row_per_position(arch):
    torch.manual_seed(0)
    model = build_model(arch, 50, 1, 16).eval()
    assert isinstance(model.classifier, nn.Linear) and model.classifier.bias is None
    assert (model.classifier.in_features, model.classifier.out_features) == (model.feature_dim, 50)
    assert model.classifier.weight.data_ptr() != model.tok_emb.weight.data_ptr()  # untied
    with torch.no_grad():
        logits, feature = model(token_ids(3, 16, 50))
        assert logits.shape == (48, 50) and feature.shape == (48, model.feature_dim)
        assert torch.equal(logits, model.classifier(feature))
        # row b * T + t is position t of sequence b: a sequence alone gives its own rows
        alone, _ = model(token_ids(3, 16, 50)[1:2])
        torch.testing.assert_close(alone, logits[16:32])


def test_changing_a_token_leaves_earlier_positions_unchanged():
    torch.manual_seed(0)
    model = build_model("gpt_micro", 30, 1, 12).eval()
    idx = token_ids(2, 12, 30, seed=3)
    with torch.no_grad():
        before = model(idx)[0].view(2, 12, 30)
        for t in (0, 5, 11):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 7) % 30
            after = model(changed)[0].view(2, 12, 30)
            torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
            assert (after[:, t] - before[:, t]).abs().max() > 1e-4  # the changed position itself moves


def test_a_sequence_longer_than_the_context_is_refused():
    model = build_model("gpt_nano", 20, 1, 8)
    model(token_ids(1, 8, 20))
    with pytest.raises(ValueError, match="sequence length 9 is outside 1..8"):
        model(token_ids(1, 9, 20))
    with pytest.raises(ValueError, match=r"token ids of shape \(B, T\)"):
        model(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="integer dtype"):
        model(torch.zeros(1, 8))


def test_init_is_nanogpt_s():
    torch.manual_seed(0)
    model = GPT(2000, 64, n_layer=8, n_head=4, n_embd=256)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.03)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.03)
    assert torch.count_nonzero(model.blocks[0].mlp.fc.bias) == 0
    assert torch.equal(model.ln_f.weight, torch.ones(256))


def test_same_seed_same_weights():
    torch.manual_seed(5)
    a = build_model("gpt_nano", 40, 1, 8)
    torch.manual_seed(5)
    b = build_model("gpt_nano", 40, 1, 8)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("head", ["linear", "nonlinear"])
def test_dual_head_runs_on_the_lm_head(head):
    torch.manual_seed(0)
    model = DualHead(build_model("gpt_nano", 25, 1, 10), head=head).train()
    logits, aux, feature = model(token_ids(2, 10, 25))
    assert logits.shape == aux.shape == (20, 25) and feature.shape == (20, 64)
    (F.cross_entropy(logits, token_ids(2, 10, 25, seed=1).flatten()) + aux.square().mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert forward_error("gpt_nano", 25, 1, 10, 2, head) is None


def test_forward_error_probes_a_token_arch_with_token_ids():
    assert forward_error("gpt_micro", 100, 1, 32, 8) is None
    assert forward_error("gpt_micro", 100, 3, 32, 1) is None  # no batch norm: a batch of 1 is fine


def test_a_few_sgd_steps_learn_a_repeated_sequence():
    """Next-token CE on one sequence repeated in the batch falls to under half its start."""
    torch.manual_seed(0)
    model = build_model("gpt_micro", 12, 1, 16).train()
    seq = token_ids(1, 17, 12, seed=2).repeat(2, 1)
    x, y = seq[:, :-1], seq[:, 1:].reshape(-1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x)[0], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
