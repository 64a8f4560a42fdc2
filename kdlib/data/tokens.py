"""The token data set container: packed next-token windows of a tokenised text corpus.

Each split's documents are tokenised, joined with an end-of-text token and cut into
non-overlapping windows of ``T + 1`` tokens (the last partial window dropped, as
nanoGPT packs), so every position is a real token and no mask is needed. ``x`` is a
window without its last token, ``y`` the same window shifted by one: ``y[:, t]`` is the
token that follows ``x[:, t]``. It carries the attributes image code reads generically
(``num_classes``, ``name``, ``x_train`` ...) so steps that only count samples and classes
treat it as they treat ``kdlib.data.dataset.Dataset``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

KIND = "tokens"
"""The ``kind`` a token data set file declares (``kdlib.data.dataset.save_dataset``)."""

SPLITS: tuple[str, ...] = ("train", "val", "test")

_STORAGE: tuple[tuple[torch.dtype, int], ...] = (
    (torch.uint8, 2**8 - 1),
    (torch.int16, 2**15 - 1),
    (torch.int32, 2**31 - 1),
)


def storage_dtype(num_classes: int) -> torch.dtype:
    """The smallest integer dtype that holds every id below ``num_classes``: a 32K
    vocabulary stored as int16 is a quarter of its int64 size on disk."""
    for dtype, largest in _STORAGE:
        if num_classes - 1 <= largest:
            return dtype
    return torch.int64


def pack_windows(ids: Tensor, context: int) -> Tensor:
    """Non-overlapping windows of ``context + 1`` consecutive ids, (N, context + 1); the
    tail that does not fill a window is dropped (nothing is padded)."""
    span = context + 1
    n = ids.numel() // span
    return ids[: n * span].reshape(n, span)


@dataclass
class TokenDataset:
    """Train/validation/test next-token windows of one tokenizer, ids as int64.

    ``num_classes`` is the vocabulary size (the classes of each position's prediction);
    ``tokenizer_json`` is the Hugging Face tokenizer that made the ids, serialised, so a
    later step can decode or re-encode text without the corpus or the training run.
    """

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    name: str
    tokenizer_json: str

    kind: ClassVar[str] = "tokens"

    @property
    def context(self) -> int:
        """T: the positions of one window."""
        return int(self.x_train.shape[1])

    @property
    def num_channels(self) -> int:
        """1: the registry's `in_channels` slot, unused by token archs."""
        return 1

    @property
    def image_size(self) -> int:
        """The context length: what the registry's `image_size` slot means for a token arch."""
        return self.context

    def train_inputs(self, x: Tensor, augment_config: Any, epoch: int, indices: Tensor) -> Tensor:
        """The model's input for training windows `x`: the ids themselves (text is not augmented)."""
        return x

    def eval_inputs(self, x: Tensor) -> Tensor:
        """The model's input for evaluation windows `x`: the ids themselves."""
        return x

    @staticmethod
    def rows(y: Tensor) -> Tensor:
        """Targets (B, T) as the rows a token model's logits are: (B*T,), batch-major."""
        return y.reshape(-1)

    @classmethod
    def from_windows(
        cls, windows: dict[str, Tensor], num_classes: int, name: str, tokenizer_json: str
    ) -> TokenDataset:
        """The data set whose split ``s`` holds ``windows[s]`` ((N, T + 1) ids, any int dtype)."""
        parts: dict[str, Tensor] = {}
        for split in SPLITS:
            w = windows[split].to(torch.int64)
            parts[f"x_{split}"] = w[:, :-1].contiguous()
            parts[f"y_{split}"] = w[:, 1:].contiguous()
        return cls(**parts, num_classes=num_classes, name=name, tokenizer_json=tokenizer_json)

    def windows(self, split: str) -> Tensor:
        """The (N, T + 1) windows of ``split`` that ``x`` and ``y`` were cut from."""
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        return torch.cat([x, y[:, -1:]], dim=1)

    def validate(self) -> None:
        """Raise ``ValueError`` naming each inconsistent field (used after building and loading)."""
        problems: list[str] = []
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            problems.append(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        if not isinstance(self.name, str) or not self.name:
            problems.append("name must be a non-empty str")
        if not isinstance(self.tokenizer_json, str) or not _is_json_object(self.tokenizer_json):
            problems.append("tokenizer_json must be a serialised tokenizer (a JSON object)")
        context: int | None = None
        for split in SPLITS:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, Tensor) or x.dtype != torch.int64 or x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
                problems.append(f"x_{split} must be a non-empty int64 tensor (N, T)")
                continue
            if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != x.shape:
                problems.append(f"y_{split} must be an int64 tensor of shape {tuple(x.shape)}")
                continue
            if context is None:
                context = int(x.shape[1])
            elif x.shape[1] != context:
                problems.append(f"x_{split} has context {x.shape[1]}, x_train has {context}")
                continue
            if not torch.equal(x[:, 1:], y[:, :-1]):
                problems.append(f"y_{split} must be x_{split} shifted by one position")
            if not problems and (int(x.min()) < 0 or int(torch.maximum(x.max(), y.max())) >= self.num_classes):
                problems.append(f"x_{split}/y_{split} hold ids outside [0, {self.num_classes})")
        if problems:
            raise ValueError("invalid TokenDataset: " + "; ".join(problems))


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


# -----------------------------------------------------------------------------
# Persistence (through kdlib.data.dataset.save_dataset / load_dataset)

_FORMAT_VERSION = 1


def to_payload(ds: TokenDataset) -> dict[str, Any]:
    """The tensors and plain values ``save_dataset`` writes: each split's windows once (x
    and y overlap in all but one column) in ``storage_dtype``, so files stay small and
    ``weights_only=True`` loading suffices."""
    dtype = storage_dtype(ds.num_classes)
    payload: dict[str, Any] = {f"windows_{s}": ds.windows(s).to(dtype).contiguous() for s in SPLITS}
    payload.update(
        kind=KIND,
        format_version=_FORMAT_VERSION,
        num_classes=int(ds.num_classes),
        name=str(ds.name),
        tokenizer_json=str(ds.tokenizer_json),
    )
    return payload


def from_payload(payload: dict[str, Any]) -> TokenDataset:
    """The validated data set of a payload ``to_payload`` made; ``ValueError`` naming the
    missing or inconsistent field otherwise."""
    required = {f"windows_{s}" for s in SPLITS} | {"num_classes", "name", "tokenizer_json"}
    if not required <= payload.keys():
        raise ValueError(f"not a token dataset (missing: {sorted(required - payload.keys())})")
    if payload.get("format_version", _FORMAT_VERSION) != _FORMAT_VERSION:
        raise ValueError(f"unsupported format_version {payload['format_version']!r}")
    windows = {s: payload[f"windows_{s}"] for s in SPLITS}
    for split, w in windows.items():
        if not isinstance(w, Tensor) or w.is_floating_point() or w.is_complex() or w.ndim != 2 or w.shape[1] < 2:
            raise ValueError(f"windows_{split} must be an integer tensor (N, T + 1) with T >= 1")
    ds = TokenDataset.from_windows(windows, int(payload["num_classes"]), payload["name"], payload["tokenizer_json"])
    ds.validate()
    return ds
