"""The teacher's top-K logits per token position, computed once and replayed by every student.

A language-model teacher maps windows `(B, T)` of token ids to logits `(B*T, V)` ("positions
as rows"). At V = 32K-128K a dense fp16 cache costs 64-256 KB per token, so only the sparse
part is kept, per position: the K largest logits (fp16), their token ids (16 bits up to
V = 65,536: int16, or uint16 past 32,767; else int32) and the teacher's log-normaliser
`logsumexp(logits)` (fp32). With the log-normaliser the top-K probabilities `exp(v - lse)` are
the teacher's own (fp16 rounding of `v` aside) and the tail mass `1 - sum(top-K)` is known
exactly, where a cache of top-K probabilities alone only knows it up to their rounding. At
K = 32: 32 * (2 + 2) + 4 = 132 bytes per token.

Token windows are not augmented, so the teacher runs once over the windows, not once per epoch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from kdlib import artifacts
from kdlib.logit_cache import TeacherBatch
from kdlib.topk import topk_restricted_log_probs

TOKENS, TEST_TOKENS = "tokens.pt", "tokens_test.pt"
"""The training windows' cache (what students read) and the test windows' (what evaluation compares with)."""
DEFAULT_TOPK = 32
"""K when a token study leaves `logits.topk` unset: 132 bytes per token at V <= 65,536."""
FIELDS = ("topk_logits", "topk_indices", "log_normalizer")


def token_index_dtype(vocab: int) -> torch.dtype:
    """The smallest dtype holding token ids 0..vocab-1: int16 to 32,767, uint16 to 65,535, else int32."""
    if vocab <= 32767:
        return torch.int16
    if vocab <= 65536:
        return torch.uint16
    return torch.int32


def _check_windows(windows: Tensor) -> None:
    if not isinstance(windows, Tensor) or windows.dtype != torch.int64 or windows.dim() != 2 or windows.numel() == 0:
        got = f"{windows.dtype} {tuple(windows.shape)}" if isinstance(windows, Tensor) else type(windows).__name__
        raise ValueError(f"windows must be a non-empty (N, T) int64 tensor of token ids, got {got}")


@torch.no_grad()
def write_token_cache(
    teacher: nn.Module,
    windows: Tensor,
    k: int,
    out_dir: Path,
    batch_size: int = 64,
    log: Callable[[str], None] = print,
    file: str = TOKENS,
) -> dict[str, Any]:
    """Run `teacher` (eval mode, no grad) once over `windows` (N, T) and write `out_dir/<file>`
    atomically: per position the top-K logits (fp16), their ids and the log-normaliser (fp32).

    Returns the manifest metadata (the step writes the manifest with it): shapes, dtypes,
    `bytes_per_token` (the stored tensors' bytes over N*T), `file_bytes_per_token` (the file on
    disk), and `dense_bytes_per_token` (V * 2, a dense fp16 cache of the same windows).
    """
    _check_windows(windows)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, t = windows.shape
    teacher.eval()
    device = next(teacher.parameters()).device
    starts = range(0, n, batch_size)
    every = max(1, len(starts) // 10)
    stored: dict[str, Tensor] = {}
    vocab = 0
    for i, start in enumerate(starts):
        rows = windows[start:start + batch_size]
        logits = teacher(rows.to(device))[0].float()
        if logits.dim() != 2 or logits.shape[0] != rows.numel():
            raise ValueError(
                f"the teacher must return logits of shape (B*T, V) = ({rows.numel()}, V) for windows "
                f"{tuple(rows.shape)}, got {tuple(logits.shape)}"
            )
        if not stored:
            vocab = logits.shape[1]
            if not 1 <= k <= vocab:
                raise ValueError(f"k = {k} must be between 1 and the teacher's vocabulary ({vocab})")
            stored = {
                "topk_logits": torch.empty(n, t, k, dtype=torch.float16),
                "topk_indices": torch.empty(n, t, k, dtype=token_index_dtype(vocab)),
                "log_normalizer": torch.empty(n, t, dtype=torch.float32),
            }
        values, ids = logits.topk(k, dim=1)
        end = start + len(rows)
        stored["topk_logits"][start:end] = values.half().cpu().view(len(rows), t, k)
        stored["topk_indices"][start:end] = ids.cpu().to(stored["topk_indices"].dtype).view(len(rows), t, k)
        stored["log_normalizer"][start:end] = logits.logsumexp(dim=1).cpu().view(len(rows), t)
        if (i + 1) % every == 0 or i + 1 == len(starts):
            log(f"cache_tokens: {end}/{n} windows ({end * t} tokens), batch {i + 1}/{len(starts)}")
    out_dir = Path(out_dir)
    artifacts.save_tensors(out_dir / file, {**stored, "vocab": vocab})
    tokens = n * t
    meta = {
        "vocab": vocab,
        "k": k,
        "windows": n,
        "seq_len": t,
        "dtypes": {name: str(x.dtype).removeprefix("torch.") for name, x in stored.items()},
        "shapes": {name: list(x.shape) for name, x in stored.items()},
        "bytes_per_token": sum(x.nbytes for x in stored.values()) / tokens,
        "file_bytes_per_token": (out_dir / file).stat().st_size / tokens,
        "dense_bytes_per_token": vocab * 2,
    }
    log(
        f"cache_tokens: K = {k} of V = {vocab}: {meta['bytes_per_token']:.1f} bytes/token "
        f"({meta['file_bytes_per_token']:.1f} on disk), dense fp16 {meta['dense_bytes_per_token']} bytes/token"
    )
    return meta


class TokenCache:
    """Read side of `write_token_cache`: one file, loaded with `torch.load(weights_only=True)`.

    When the folder has a manifest (a pipeline step wrote it) its hashes are checked first; any
    damage (hash, truncation, wrong shapes or dtypes) is a ValueError naming the file.
    """

    def __init__(self, out_dir: Path, file: str = TOKENS) -> None:
        self.dir = Path(out_dir)
        self.path = self.dir / file
        if (self.dir / artifacts.MANIFEST).is_file():
            artifacts.read_manifest(self.dir, verify=True)
        if not self.path.is_file():
            raise FileNotFoundError(f"token cache {self.path} not found: run cache_tokens first")
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - whatever torch.load cannot read is damage here
            raise ValueError(
                f"token cache {self.path} cannot be read by torch.load(weights_only=True) "
                f"({type(err).__name__}: {str(err)[:200]}): truncated or corrupt; re-run cache_tokens"
            ) from None
        self._check(data)
        self.vocab: int = data["vocab"]
        self.topk_logits: Tensor = data["topk_logits"]
        self.topk_indices: Tensor = data["topk_indices"]
        self.log_normalizer: Tensor = data["log_normalizer"]
        self.windows, self.seq_len, self.k = self.topk_logits.shape
        self.bytes_per_token = sum(x.nbytes for x in (self.topk_logits, self.topk_indices, self.log_normalizer)) / (
            self.windows * self.seq_len
        )

    def _check(self, data: Any) -> None:
        def bad(what: str) -> ValueError:
            return ValueError(f"token cache {self.path} is damaged or foreign: {what}; re-run cache_tokens")

        if not isinstance(data, dict) or set(data) != {*FIELDS, "vocab"}:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise bad(f"expected the keys {[*FIELDS, 'vocab']}, got {keys}")
        vocab = data["vocab"]
        if not isinstance(vocab, int) or vocab < 1:
            raise bad(f"vocab must be a positive int, got {vocab!r}")
        values, ids, lse = (data[f] for f in FIELDS)
        if not all(isinstance(x, Tensor) for x in (values, ids, lse)):
            raise bad("its entries are not tensors")
        expected = {"topk_logits": torch.float16, "topk_indices": token_index_dtype(vocab),
                    "log_normalizer": torch.float32}
        for name, dtype in expected.items():
            if data[name].dtype != dtype:
                raise bad(f"{name} has dtype {data[name].dtype}, expected {dtype} for vocab {vocab}")
        shaped = values.dim() == 3 and ids.shape == values.shape and lse.shape == values.shape[:2]
        if not shaped or not 1 <= values.shape[2] <= vocab:
            raise bad(
                f"shapes topk_logits {tuple(values.shape)}, topk_indices {tuple(ids.shape)}, log_normalizer "
                f"{tuple(lse.shape)} are not (N, T, K), (N, T, K), (N, T) with 1 <= K <= {vocab}"
            )

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The windows `indices` (B,) as rows: top-K logits float32 (B*T, K), token ids int64
        (B*T, K), log-normaliser float32 (B*T,)."""
        idx = indices.cpu()
        return (
            self.topk_logits[idx].reshape(-1, self.k).float(),
            self.topk_indices[idx].reshape(-1, self.k).long(),
            self.log_normalizer[idx].reshape(-1),
        )

    def restricted_logits(self, indices: Tensor) -> Tensor:
        """Dense float32 log-probabilities (B*T, V) of the teacher restricted to its top-K (the
        tail mass spread uniformly), for methods that read dense teacher logits."""
        return topk_restricted_log_probs(*self.batch(indices), self.vocab)

    def teacher_views(self, epoch: int, indices: Tensor) -> Tensor:
        """`fit`'s `teacher_views(epoch, indices)`: the restricted dense teacher. `epoch` is
        unused: token windows are not augmented, so every epoch sees the same teacher outputs."""
        return self.restricted_logits(indices)

    def reader(self, fields: tuple[str, ...], augment_seed: int | None = None) -> Callable[[int, Tensor], Any]:
        """The `teacher_views(epoch, indices)` a student trains from, as `LogitCache.reader`: the
        restricted dense teacher for ("logits",); the top-K probabilities `exp(v - lse)` and ids
        (a `TeacherBatch`) for the sparse-KD fields. Teacher features are not cached for tokens."""
        if tuple(fields) == ("logits",):
            return self.teacher_views
        if set(fields) <= {"topk_probs", "topk_indices"}:
            def sparse(epoch: int, indices: Tensor) -> TeacherBatch:
                values, ids, lse = self.batch(indices)
                out = {"topk_probs": (values - lse[:, None]).exp(), "topk_indices": ids}
                return TeacherBatch(**{k: v for k, v in out.items() if k in fields})
            return sparse
        raise ValueError(
            f"the token cache {self.dir} holds top-K logits and the log-normaliser per position; a method reading "
            f"{list(fields)} (teacher features) cannot train on tokens"
        )
