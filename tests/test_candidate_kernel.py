"""The compiled candidate scorer (models/_mf_kernels_numba.py) against its slow twin.

The twin gathers the candidates' rows and multiplies in float64, then rounds to float32; the
kernel sums the same exact float64 products in another order, so the float32 scores are equal
(a difference needs the float64 sum within ~1e-16 of a float32 rounding boundary), and so are the
ranks, whatever the thread count or the rows batched together.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smlrec.evaluation.metrics import positive_ranks, rank_candidates
from smlrec.models import mf_kernels
from smlrec.models.mf import _torch_candidate_scores, candidate_scores, candidate_scores_reference

pytestmark = pytest.mark.skipif(not mf_kernels.AVAILABLE, reason="numba is not installed")


def _tables(n_items: int = 500, n_rows: int = 300, n_cands: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = torch.from_numpy((rng.standard_normal((n_items, 64)) * 0.3).astype(np.float32))
    items[10:20] = items[5]               # identical rows (as cold items served one mean row)
    users = torch.from_numpy((rng.standard_normal((n_rows, 64)) * 0.3).astype(np.float32))
    cands = torch.from_numpy(rng.integers(0, n_items, (n_rows, n_cands)))
    cands[:50, 0] = 5                     # the positive shares its row with candidates 10..19
    cands[:50, 1:11] = torch.arange(10, 20)
    return users, items, cands


def test_kernel_scores_equal_the_float64_twin_bit_for_bit():
    users, items, cands = _tables()
    with torch.no_grad():
        fast = candidate_scores(users, items, cands)
    assert fast.dtype == torch.float32
    assert torch.equal(fast, candidate_scores_reference(users, items, cands))
    # and within float32 rounding of torch's own float32 products (the GPU / autograd path)
    torch.testing.assert_close(fast, _torch_candidate_scores(users, items, cands), atol=1e-5, rtol=1e-5)


def test_identical_item_rows_tie_exactly_and_ties_count_against_the_model():
    users, items, cands = _tables()
    with torch.no_grad():
        scores = candidate_scores(users, items, cands)
    assert torch.equal(scores[:50, 1:11], scores[:50, :1].expand(-1, 10))
    assert (positive_ranks(scores)[:50] >= 10).all()


def test_nan_rows_give_nan_scores_that_count_against_the_model():
    users, items, cands = _tables()
    items[7] = float("nan")
    cands[0, 3] = 7
    with torch.no_grad():
        scores = candidate_scores(users, items, cands)
    assert torch.isnan(scores[0, 3])
    assert positive_ranks(scores)[0] == positive_ranks(candidate_scores_reference(users, items, cands))[0]


def test_same_scores_for_any_thread_count_and_batching():
    users, items, cands = _tables(n_rows=700, n_cands=300)   # 210k scores: split over threads
    uv, table, ids = users.numpy(), items.numpy(), cands.numpy()
    outs = []
    for threads in (1, 2, 3):
        out = np.empty(ids.shape, dtype=np.float32)
        mf_kernels.parallel_candidate_scores(uv, table, ids, out, threads)
        outs.append(out)
    one_by_one = np.empty(ids.shape, dtype=np.float32)
    for b in range(0, len(ids), 97):
        mf_kernels.candidate_scores(uv[b:b + 97], table, ids[b:b + 97], one_by_one[b:b + 97])
    for out in outs[1:] + [one_by_one]:
        assert np.array_equal(out, outs[0])


def test_rank_candidates_ranks_equal_the_twins_ranks():
    users, items, cands = _tables(n_rows=400)
    store = cands.numpy().astype(np.int32)
    store[3, 150:] = -1                    # padding, as rows with short candidate pools have
    fast = rank_candidates(lambda rows, c: candidate_scores(users[rows], items, c), store, batch_size=64)
    slow = rank_candidates(lambda rows, c: candidate_scores_reference(users[rows], items, c), store,
                           batch_size=64)
    assert np.array_equal(fast, slow)


def test_autograd_keeps_the_torch_path():
    users, items, cands = _tables(n_rows=60, n_cands=20)
    items.requires_grad_(True)
    scores = candidate_scores(users, items, cands)
    scores.sum().backward()
    assert items.grad is not None and items.grad.abs().sum() > 0


def test_compiled_ranks_equal_positive_ranks_with_ties_nan_and_padding():
    rng = np.random.default_rng(5)
    scores = torch.from_numpy(rng.integers(-3, 4, (200, 50)).astype(np.float32))   # many ties
    scores[rng.random((200, 50)) < 0.05] = float("nan")
    scores[7, 0] = float("nan")
    ids = rng.integers(0, 90, (200, 50))
    ids[rng.random((200, 50)) < 0.1] = -1
    ids[:, 0] = rng.integers(0, 90, 200)
    fast = np.empty(200, dtype=np.int32)
    mf_kernels.positive_ranks(scores.numpy(), ids, fast)
    slow = positive_ranks(scores, torch.from_numpy(ids[:, 1:] >= 0)).numpy()
    assert np.array_equal(fast, slow)
    assert fast[7] == (ids[7, 1:] >= 0).sum()      # a NaN positive loses to every real candidate
