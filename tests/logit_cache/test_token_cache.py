"""The sparse teacher cache for tokens: its size per token, its values against the live teacher,
16-bit token ids at both ends of their range, the restricted dense teacher, a student trained from
it against one trained from the live teacher restricted to the same top-K, and damaged files."""
import re

import pytest
import torch

from kdlib import artifacts
from kdlib.token_cache import TOKENS, TokenCache, token_index_dtype, write_token_cache
from tests.helpers.token_cache import TokenModel, live_rows, restricted_reference


def quiet(_line):
    pass


def windows(n, t, vocab, seed=0):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("vocab", [4096, 65536])
def test_bytes_per_token_at_k32_is_within_150(vocab, tmp_path):
    meta = write_token_cache(TokenModel(vocab), windows(16, 16, vocab), 32, tmp_path, batch_size=4, log=quiet)
    # 32 fp16 logits + 32 16-bit ids + one fp32 log-normaliser
    assert meta["bytes_per_token"] == 32 * 2 + 32 * 2 + 4 == 132
    assert meta["file_bytes_per_token"] <= 150  # zip and pickle overhead included, at only 256 tokens
    assert meta["dense_bytes_per_token"] == 2 * vocab
    assert meta["dtypes"]["topk_indices"] == str(token_index_dtype(vocab)).removeprefix("torch.")
    assert TokenCache(tmp_path).bytes_per_token == 132


def test_round_trip_matches_the_live_teacher_in_eval_mode(tmp_path):
    vocab, k, batch_size = 100, 8, 3
    teacher = TokenModel(vocab, dropout=0.5).train()  # the writer must switch dropout off
    x = windows(10, 6, vocab)
    lines = []
    write_token_cache(teacher, x, k, tmp_path, batch_size=batch_size, log=lines.append)
    cache = TokenCache(tmp_path)
    assert (cache.windows, cache.seq_len, cache.k, cache.vocab) == (10, 6, k, vocab)
    for start in range(0, 10, batch_size):  # the live teacher on the writer's batches: same arithmetic
        idx = torch.arange(start, min(start + batch_size, 10))
        logits = live_rows(teacher, x[idx])
        values, ids, lse = cache.batch(idx)
        assert values.dtype == lse.dtype == torch.float32 and ids.dtype == torch.int64
        assert values.shape == ids.shape == (len(idx) * 6, k) and lse.shape == (len(idx) * 6,)
        live_values, live_ids = logits.topk(k, dim=1)
        assert torch.equal(ids, live_ids)
        assert torch.equal(values, live_values.half().float())  # fp16 storage, nothing else lost
        torch.testing.assert_close(values, live_values, rtol=2**-11, atol=0)
        assert torch.equal(lse, logits.logsumexp(dim=1))  # stored in fp32, exact
    # out of order and repeated windows: rows follow the indices asked for
    idx = torch.tensor([7, 0, 7])
    values, ids, _ = cache.batch(idx)
    assert torch.equal(ids, live_rows(teacher, x[idx]).topk(k, dim=1).indices)
    assert len(lines) == 4 + 1 and "bytes/token" in lines[-1]


def test_progress_lines_come_every_tenth_of_the_batches(tmp_path):
    lines = []
    write_token_cache(TokenModel(20), windows(40, 2, 20), 3, tmp_path, batch_size=1, log=lines.append)
    progress = [line for line in lines if "windows" in line]
    assert len(progress) == 10 and progress[-1].startswith("cache_tokens: 40/40 windows (80 tokens)")


def test_index_dtype_follows_the_vocabulary():
    assert token_index_dtype(100) == token_index_dtype(32767) == torch.int16
    assert token_index_dtype(32768) == token_index_dtype(65536) == torch.uint16
    assert token_index_dtype(65537) == torch.int32


@pytest.mark.parametrize(("vocab", "ids", "dtype"), [
    (32767, (0, 1, 32765, 32766), torch.int16),
    (32768, (0, 32766, 32767, 3), torch.uint16),
    (65536, (0, 32767, 32768, 65535), torch.uint16),
    (65537, (0, 32768, 65535, 65536), torch.int32),
])
def test_token_ids_at_both_ends_of_the_index_range_round_trip(vocab, ids, dtype, tmp_path):
    write_token_cache(TokenModel(vocab, boost=ids), windows(2, 3, vocab), len(ids), tmp_path, batch_size=1, log=quiet)
    stored = artifacts.load_tensors(tmp_path / TOKENS)["topk_indices"]
    assert stored.dtype == dtype
    _, got, _ = TokenCache(tmp_path).batch(torch.arange(2))
    assert got.dtype == torch.int64
    assert torch.equal(got.sort(dim=1).values, torch.tensor(sorted(ids)).expand(6, len(ids)))


def test_restricted_dense_teacher_equals_the_live_teacher_restricted_to_its_topk(tmp_path):
    vocab, k = 50, 5
    teacher, x = TokenModel(vocab), windows(6, 4, vocab)
    write_token_cache(teacher, x, k, tmp_path, batch_size=6, log=quiet)
    cache = TokenCache(tmp_path)
    idx = torch.tensor([4, 1, 5])
    logits = live_rows(teacher, x[idx])
    expected = restricted_reference(logits, logits.topk(k, dim=1).indices)
    got = cache.restricted_logits(idx)
    assert got.shape == (12, vocab) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=3e-3)  # fp16 rounding of logits of size <= ~4
    torch.testing.assert_close(got.exp().sum(dim=1), torch.ones(12), rtol=0, atol=3e-3)
    # fit's teacher_views: the same for every epoch (token windows are not augmented), movable
    for epoch in (0, 3):
        assert torch.equal(cache.teacher_views(epoch, idx).to("cpu"), got)


def test_restriction_to_the_whole_vocabulary_is_the_teacher(tmp_path):
    teacher, x = TokenModel(12), windows(3, 4, 12)
    write_token_cache(teacher, x, 12, tmp_path, batch_size=3, log=quiet)
    got = TokenCache(tmp_path).restricted_logits(torch.arange(3))
    torch.testing.assert_close(got, live_rows(teacher, x).log_softmax(dim=1), rtol=0, atol=3e-3)


def sgd_student(targets, x, steps=3):
    """A tiny student after `steps` SGD steps of KL(teacher || student) on batches of 4 windows;
    `targets(idx)` gives the teacher's log-probs (B*T, V) for the windows idx."""
    student = TokenModel(x.max().item() + 1, dim=6, seed=1)
    opt = torch.optim.SGD(student.parameters(), lr=0.5, momentum=0.9)
    for step in range(steps):
        idx = torch.arange(4 * step, 4 * step + 4)
        log_p = targets(idx)
        loss = (log_p.exp() * (log_p - student(x[idx])[0].log_softmax(dim=1))).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.state_dict()


def test_student_from_the_cache_equals_one_taught_by_the_live_topk_teacher(tmp_path):
    vocab, k = 64, 8
    # logits that are fp16 values: the cache holds them exactly, so the two students may differ
    # only by float32 arithmetic order (the fp16 rounding itself is tested above)
    teacher, x = TokenModel(vocab, fp16_exact=True), windows(12, 5, vocab)
    x[0, 0] = vocab - 1  # the student's vocabulary is x.max() + 1
    write_token_cache(teacher, x, k, tmp_path, batch_size=5, log=quiet)
    cache = TokenCache(tmp_path)

    def live_topk(idx):
        logits = live_rows(teacher, x[idx])
        return restricted_reference(logits, logits.topk(k, dim=1).indices)

    from_cache = sgd_student(lambda idx: cache.teacher_views(0, idx), x)
    from_live = sgd_student(live_topk, x)
    from_full = sgd_student(lambda idx: live_rows(teacher, x[idx]).log_softmax(dim=1), x)
    start = TokenModel(vocab, dim=6, seed=1).state_dict()
    for name in from_cache:
        if name == "boost":
            continue
        torch.testing.assert_close(from_cache[name], from_live[name], rtol=0, atol=1e-6)
        assert (from_cache[name] - start[name]).abs().max() > 1e-3  # the steps moved every weight
    # the restriction matters: the full teacher trains another student
    assert (from_full["classifier.weight"] - from_cache["classifier.weight"]).abs().max() > 1e-4


def test_damaged_cache_is_an_error_naming_the_file(tmp_path):
    write_token_cache(TokenModel(30), windows(4, 3, 30), 4, tmp_path, batch_size=2, log=quiet)
    path = tmp_path / TOKENS
    name = re.escape(str(path))
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated, no manifest: torch.load fails
    with pytest.raises(ValueError, match=rf"token cache {name} cannot be read.*truncated or corrupt"):
        TokenCache(tmp_path)
    path.write_bytes(good)
    artifacts.write_manifest(tmp_path, "cache_tokens", "k", {})
    TokenCache(tmp_path)
    path.write_bytes(good[:-10])  # with a manifest: its hash check names the file
    with pytest.raises(ValueError, match=rf"artifact {name} is missing or does not match its manifest hash"):
        TokenCache(tmp_path)
    (tmp_path / artifacts.MANIFEST).unlink()
    path.write_bytes(good)
    stored = artifacts.load_tensors(path)
    stored["topk_indices"] = stored["topk_indices"].long()  # loads, but not in the dtype its vocab calls for
    artifacts.save_tensors(path, stored)
    with pytest.raises(ValueError, match=rf"token cache {name} is damaged or foreign: topk_indices has dtype torch.int64"):
        TokenCache(tmp_path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="not found"):
        TokenCache(tmp_path)


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"windows must be a non-empty \(N, T\) int64 tensor"):
        write_token_cache(TokenModel(10), windows(2, 3, 10).int(), 2, tmp_path, log=quiet)
    with pytest.raises(ValueError, match=r"k = 11 must be between 1 and the teacher's vocabulary \(10\)"):
        write_token_cache(TokenModel(10), windows(2, 3, 10), 11, tmp_path, log=quiet)
    assert not (tmp_path / TOKENS).exists()
