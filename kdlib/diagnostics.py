"""Why a method wins: gradient conflict, neural collapse and teacher fidelity (torch only).

DHKD's claim is mechanistic: a logit-level KD loss and cross-entropy pull the linear
classifier in conflicting directions while agreeing in the backbone, and a shared head
collapses. These diagnostics measure exactly that, for every method:

- `gradient_conflict`: cosine between the gradients of each pair of named loss terms,
  separately on the head parameters and on the backbone parameters.
- `neural_collapse`: NC1-NC3 (Papyan, Han & Donoho 2020) of penultimate features and
  each linear head, plus head-weight norms.
- `teacher_fidelity`: top-1 agreement, KL to the teacher and the Spearman rank
  correlation of the non-target logits with the teacher's.

`Probe` bundles the per-epoch ones as the `diagnose` hook of `kdlib.train.fit`, so the
values land in each epoch's history record (and from there in MLflow and the report).
Calibration (ECE, reliability diagram) lives in `kdlib.metrics`.
"""
from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import Tensor, nn

from kdlib.config import AugmentConfig
from kdlib.data.dataset import AnyDataset
from kdlib.metrics import agreement, kl_to_teacher
from kdlib.objective import Objective
from kdlib.train import predict

HEAD_MODULES = ("classifier", "aux_head", "weak_head", "projector")
"""Module names whose parameters count as "head"; the rest of the student is "backbone".

A parameter is a head parameter when any component of its dotted name is one of these
(`classifier.weight`, `backbone_model.classifier.bias`, `aux_head.0.weight`): the linear
classifier(s), DHKD's second head, USKD's weak head, KD++'s feature projector. A method
that adds a new head-side module names it here (or passes `heads=` explicitly)."""

NC_HEADS = ("classifier", "aux_head")
"""The heads that read the penultimate feature, whose rows neural collapse compares with the class means."""

ONLINE_TEACHER = "teacher"
"""Top-level module of an online teacher (`kdlib.models.heads.OnlinePair`): not the student's, left out."""


def is_head_parameter(name: str, heads: tuple[str, ...] = HEAD_MODULES) -> bool:
    return any(part in heads for part in name.split(".")[:-1])


def split_parameters(model: nn.Module, heads: tuple[str, ...] = HEAD_MODULES) -> dict[str, list[nn.Parameter]]:
    """The student's trainable parameters as {"head": [...], "backbone": [...]}; errors if a part is empty."""
    parts: dict[str, list[nn.Parameter]] = {"head": [], "backbone": []}
    for name, p in model.named_parameters():
        if p.requires_grad and name.split(".")[0] != ONLINE_TEACHER:
            parts["head" if is_head_parameter(name, heads) else "backbone"].append(p)
    for part, params in parts.items():
        if not params:
            raise ValueError(f"no {part} parameters in {type(model).__name__} for head modules {heads}")
    return parts


def cosine(a: Tensor, b: Tensor) -> float | None:
    """Cosine of two flat vectors in float64; None when either is zero (no direction)."""
    a, b = a.double(), b.double()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return None
    return (a @ b / (na * nb)).item()


def gradient_conflict(terms: dict[str, Tensor], parts: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """Per part: each term's gradient norm and the cosine of each pair of terms' gradients.

    Keys: `grad_norm/<part>/<term>` and `grad_cos/<part>/<a>_vs_<b>` (terms in dict order).
    A pair's cosine on a part exists only when some parameter tensor of that part gets a
    non-zero gradient from both terms. Otherwise it is left out, not given a made-up 0: a
    term with no gradient on the part has no direction there, and two terms that reach
    separate tensors (DHKD: CE on `classifier`, the KD loss on `aux_head`) share no weight
    whose update they could fight over.
    """
    names = [n for n, t in terms.items() if t.requires_grad]
    params = [p for ps in parts.values() for p in ps]
    flat: dict[str, dict[str, Tensor]] = {part: {} for part in parts}
    reached: dict[str, dict[str, set[int]]] = {part: {} for part in parts}
    for name in names:  # one backward per term, split by part afterwards
        grads = torch.autograd.grad(terms[name], params, retain_graph=True, allow_unused=True)
        vectors = [(g if g is not None else torch.zeros_like(p)).reshape(-1).double() for p, g in zip(params, grads)]
        start = 0
        for part, ps in parts.items():
            own = vectors[start : start + len(ps)]
            flat[part][name] = torch.cat(own)
            reached[part][name] = {i for i, v in enumerate(own) if bool(v.any())}
            start += len(ps)
    out: dict[str, float] = {}
    for part, by_term in flat.items():
        out.update({f"grad_norm/{part}/{name}": g.norm().item() for name, g in by_term.items()})
        for a, b in itertools.combinations(names, 2):
            if not reached[part][a] & reached[part][b]:
                continue
            value = cosine(by_term[a], by_term[b])
            if value is not None:
                out[f"grad_cos/{part}/{a}_vs_{b}"] = value
    return out


# --------------------------------------------------------------------------- #
# neural collapse
# --------------------------------------------------------------------------- #
def equinorm(vectors: Tensor) -> float:
    """NC2 equinorm: coefficient of variation (population std / mean) of the row norms; 0 = equal norms."""
    norms = vectors.double().norm(dim=1)
    return (norms.std(correction=0) / norms.mean()).item()


def equiangularity(vectors: Tensor) -> tuple[float, float]:
    """NC2 equiangularity of the rows: (std of pairwise cosines, mean |cos + 1/(C-1)|).

    Both are 0 for a simplex equiangular tight frame, whose C rows meet pairwise at
    cosine -1/(C-1), the most separated C directions possible.
    """
    c = vectors.shape[0]
    unit = vectors.double() / vectors.double().norm(dim=1, keepdim=True)
    cos = (unit @ unit.T)[~torch.eye(c, dtype=torch.bool)]
    return cos.std(correction=0).item(), (cos + 1.0 / (c - 1)).abs().mean().item()


def neural_collapse(features: Tensor, labels: Tensor, heads: dict[str, Tensor] | None = None) -> dict[str, float]:
    """NC metrics of penultimate `features` (N, d) with `labels`, and of head weights (C, d).

    - `nc/nc1` = tr(Sigma_W Sigma_B^+) / C: within-class covariance relative to
      between-class; 0 when every feature sits on its class mean.
    - `nc/means_norm_cv`, `nc/means_cos_std`, `nc/means_cos_dev`: NC2 of the class means
      centred on the global mean (the mean of the class means: robust to imbalance).
    - per head H: `nc/H_norm_cv`, `nc/H_cos_std`, `nc/H_cos_dev` (NC2 of its rows),
      `nc/H_nc3` = || W/||W||_F - M/||M||_F ||_F with M the centred class means (0 when
      the head is the class-mean frame up to scale), `nc/H_norm` (Frobenius norm of W).
    Only classes present in `labels` are used (head rows of absent classes are dropped).
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be (N, d) with labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}")
    h = features.double()
    classes, index = labels.unique(return_inverse=True)
    c = len(classes)
    if c < 2:
        raise ValueError(f"neural collapse needs at least 2 classes in the labels, got {c}")
    counts = torch.bincount(index, minlength=c).double()
    means = torch.zeros(c, h.shape[1], dtype=torch.float64).index_add_(0, index, h) / counts[:, None]
    centred = means - means.mean(0)
    within = h - means[index]
    sigma_w = within.T @ within / len(h)
    sigma_b = centred.T @ centred / c
    out = {"nc/nc1": torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)).item() / c}
    out["nc/means_norm_cv"] = equinorm(centred)
    out["nc/means_cos_std"], out["nc/means_cos_dev"] = equiangularity(centred)
    for name, weight in (heads or {}).items():
        if weight.shape[1] != h.shape[1]:
            raise ValueError(f"head {name!r} reads {weight.shape[1]} features but the features have {h.shape[1]}")
        w = weight.double()[classes]
        out[f"nc/{name}_norm_cv"] = equinorm(w)
        out[f"nc/{name}_cos_std"], out[f"nc/{name}_cos_dev"] = equiangularity(w)
        out[f"nc/{name}_nc3"] = (w / w.norm() - centred / centred.norm()).norm().item()
        out[f"nc/{name}_norm"] = weight.double().norm().item()
    return out


def linear_heads(model: nn.Module, feature_dim: int, heads: tuple[str, ...] = NC_HEADS) -> dict[str, Tensor]:
    """Weights of the linear heads that read the penultimate feature, by module name's last part.

    A non-linear head (DHKD's `aux_head: mlp`) has no rows in feature space and is skipped.
    """
    return {
        name.rsplit(".", 1)[-1]: module.weight.detach()
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in heads and name.split(".")[0] != ONLINE_TEACHER
        and isinstance(module, nn.Linear) and module.in_features == feature_dim
    }


# --------------------------------------------------------------------------- #
# teacher fidelity
# --------------------------------------------------------------------------- #
def average_ranks(x: Tensor, chunk: int = 512) -> Tensor:
    """1-based ranks within each row, ties sharing their average rank (as Spearman's rho needs)."""
    out = []
    for rows in x.double().split(chunk):
        less = (rows[:, None, :] < rows[:, :, None]).sum(-1)
        equal = (rows[:, None, :] == rows[:, :, None]).sum(-1)
        out.append(less.double() + (equal.double() + 1) / 2)
    return torch.cat(out)


def nontarget_rank_correlation(logits: Tensor, teacher: Tensor, target: Tensor) -> float:
    """Mean over samples of Spearman's rho between student and teacher non-target logits.

    Measures whether the student learned the teacher's *ranking* of the wrong classes
    (its "dark knowledge"), which top-1 agreement ignores. A row whose non-target logits
    are all equal on either side carries no ranking and counts as 0; so does every row
    of a 2-class problem (one non-target class: nothing to rank).
    """
    if logits.shape != teacher.shape:
        raise ValueError(f"need student and teacher logits of one shape, got {tuple(logits.shape)} and {tuple(teacher.shape)}")
    if logits.shape[1] < 3:
        return 0.0
    keep = torch.ones_like(logits, dtype=torch.bool).scatter_(1, target[:, None], False)
    n, c = logits.shape
    rs = average_ranks(logits[keep].view(n, c - 1))
    rt = average_ranks(teacher[keep].view(n, c - 1))
    rs, rt = rs - rs.mean(1, keepdim=True), rt - rt.mean(1, keepdim=True)
    denom = rs.norm(dim=1) * rt.norm(dim=1)
    rho = torch.where(denom > 0, (rs * rt).sum(1) / denom.clamp_min(1e-300), torch.zeros_like(denom))
    return rho.mean().item()


def teacher_fidelity(logits: Tensor, teacher: Tensor, target: Tensor) -> dict[str, float]:
    return {
        "agreement": agreement(logits, teacher),
        "kl_to_teacher": kl_to_teacher(logits, teacher),
        "nontarget_rank_corr": nontarget_rank_correlation(logits, teacher, target),
    }


# --------------------------------------------------------------------------- #
# the per-epoch hook of kdlib.train.fit
# --------------------------------------------------------------------------- #
class Probe:
    """The `diagnose(model, epoch)` hook: gradient conflict every epoch, NC every K epochs.

    The probe batch is a fixed set of training samples (the first `probe_size` of a
    permutation seeded by `probe_seed`, the same for every method and seed of a study),
    seen through the epoch's replayed augmentation so the cached teacher logits match.
    The extra forward runs in train mode like training does; batch-norm buffers and the
    RNG are restored afterwards, so a run with diagnostics trains to the same weights as
    one without. NC metrics use the un-augmented training set in eval mode, at the end of
    every `nc_every`-th epoch (0: only the last epoch) and always at the last one.

    The conflict is that of the terms' own gradients: a method whose `backward` reshapes
    them (DHKD's `grad_align`) is measured before that reshaping, i.e. the conflict it removes.
    """

    def __init__(
        self,
        method: Objective,
        ds: AnyDataset,
        augment_config: AugmentConfig,
        epochs: int,
        teacher_views: Callable[[int, Tensor], Tensor] | None = None,
        probe_size: int = 128,
        nc_every: int = 0,
        probe_seed: int = 0,
        heads: tuple[str, ...] = HEAD_MODULES,
    ) -> None:
        self.method, self.ds, self.augment_config, self.epochs = method, ds, augment_config, epochs
        self.teacher_views, self.nc_every, self.heads = teacher_views, nc_every, heads
        generator = torch.Generator().manual_seed(probe_seed)
        self.indices = torch.randperm(len(ds.x_train), generator=generator)[: min(probe_size, len(ds.x_train))].sort().values

    def nc_due(self, epoch: int) -> bool:
        if self.ds.kind == "tokens":
            # NC is defined over a model's classes seen as balanced training populations; a
            # vocabulary's sub-word tokens are neither, and (C, C) statistics at C = V do not fit
            return False
        last = epoch + 1 == self.epochs
        return last or (self.nc_every > 0 and (epoch + 1) % self.nc_every == 0)

    def conflict(self, model: nn.Module, epoch: int) -> dict[str, float]:
        device = next(model.parameters()).device
        x = self.ds.train_inputs(self.ds.x_train[self.indices].to(device), self.augment_config, epoch, self.indices)
        target = self.ds.rows(self.ds.y_train[self.indices]).to(device)
        teacher = self.teacher_views(epoch, self.indices).to(device) if self.method.needs_teacher else None
        buffers = [b.detach().clone() for b in model.buffers()]
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            model.train()
            _, terms = self.method.forward_train(model, x, target, teacher, epoch)
            out = gradient_conflict(terms, split_parameters(model, self.heads)) if len(terms) > 1 else {}
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        return out

    def collapse(self, model: nn.Module) -> dict[str, float]:
        # the exported student's own feature (a KD++ projector's output is not the penultimate feature)
        features = predict(self.method.exported(model), self.ds.x_train, self.ds, output=-1)
        return neural_collapse(features, self.ds.y_train, linear_heads(model, features.shape[1]))

    def __call__(self, model: nn.Module, epoch: int) -> dict[str, float]:
        out = self.conflict(model, epoch)
        if self.nc_due(epoch):
            out.update(self.collapse(model))
        return out
