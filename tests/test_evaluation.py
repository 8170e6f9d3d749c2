"""Ranks and metrics on hand-computed cases (sml-method.md section 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smlrec.evaluation.metrics import (METRIC_NAMES, metrics_from_ranks, micro_average, positive_ranks,
                                       rank_candidates)

nan = float("nan")


def test_rank_counts_strictly_higher_negatives():
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.2, 0.7],   # 0.9, 0.7 beat it -> rank 2
                           [3.0, 1.0, 2.0, -1.0, 0.0],  # best -> rank 0
                           [-5.0, 1.0, 2.0, 3.0, 4.0]])  # worst -> rank 4
    assert positive_ranks(scores).tolist() == [2, 0, 4]


def test_ties_count_against_the_model():
    scores = torch.tensor([[1.0, 1.0, 0.0, 2.0],   # one tie + one higher -> 2
                           [0.0, 0.0, 0.0, 0.0]])  # all equal -> rank 3 (the worst)
    assert positive_ranks(scores).tolist() == [2, 3]
    # an untrained all-equal row never hits, even at K = number of negatives
    row = torch.zeros(1, 1000)
    rank = positive_ranks(row)
    assert rank.item() == 999
    assert metrics_from_ranks(rank.numpy())["recall@20"] == 0.0


def test_nan_scores_count_against_the_model():
    scores = torch.tensor([[1.0, nan, 0.0, 0.5],   # NaN negative beats -> 1
                           [nan, 0.0, 1.0, 2.0]])  # NaN positive loses to all -> 3
    assert positive_ranks(scores).tolist() == [1, 3]


def test_padding_is_masked():
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.1],
                           [0.5, 0.9, 0.9, 0.1]])
    valid = torch.tensor([[True, True, True],
                          [False, True, False]])
    assert positive_ranks(scores, valid).tolist() == [2, 1]
    # padded entries never count, even when NaN or tied
    scores = torch.tensor([[0.5, nan, 0.5, 0.1]])
    assert positive_ranks(scores, torch.tensor([[False, False, True]])).tolist() == [0]


def test_metrics_exact_values():
    ranks = np.array([0, 1, 4, 5, 9, 19, 20])
    m = metrics_from_ranks(ranks)
    assert list(m) == list(METRIC_NAMES)
    assert m["recall@5"] == pytest.approx(3 / 7)
    assert m["recall@10"] == pytest.approx(5 / 7)
    assert m["recall@20"] == pytest.approx(6 / 7)
    g = [1.0, 1 / math.log2(3), 1 / math.log2(6), 1 / math.log2(7), 1 / math.log2(11),
         1 / math.log2(21)]
    assert m["ndcg@5"] == pytest.approx(sum(g[:3]) / 7)
    assert m["ndcg@10"] == pytest.approx(sum(g[:5]) / 7)
    assert m["ndcg@20"] == pytest.approx(sum(g) / 7)


def test_single_rank_one_is_one_over_log2_3():
    m = metrics_from_ranks(np.array([1]))
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(3))
    assert m["recall@5"] == 1.0
    assert metrics_from_ranks(np.array([0]))["ndcg@10"] == 1.0
    edge = metrics_from_ranks(np.array([5]), ks=(5, 6))
    assert edge["recall@5"] == 0.0 and edge["ndcg@5"] == 0.0
    assert edge["recall@6"] == 1.0 and edge["ndcg@6"] == pytest.approx(1 / math.log2(7))


def test_metrics_of_nothing_are_nan():
    assert all(math.isnan(v) for v in metrics_from_ranks(np.array([])).values())


def test_micro_average_weights_by_interactions():
    assert micro_average(np.array([0.5, 0.1]), np.array([1, 3])) == pytest.approx((0.5 + 0.3) / 4)
    assert micro_average(np.array([0.2, 0.2, 0.2]), np.array([5, 1, 9])) == pytest.approx(0.2)


def test_rank_candidates_batches_and_padding():
    # score = -item index (lower index is better); candidates [pos, negs...]; -1 is padding.
    candidates = np.array([[3, 5, 1, -1, -1],   # 1 beats 3 -> rank 1
                           [0, 5, 6, 7, 8],     # best -> 0
                           [9, 9, 2, -1, -1],   # tie with 9 and 2 beats -> 2
                           [4, -1, -1, -1, -1]], dtype=np.int32)
    seen_rows = []

    def score_batch(rows, cands):
        seen_rows.append((rows.start, rows.stop))
        assert (cands >= 0).all()  # padding is clamped before scoring
        return -cands.float()

    ranks = rank_candidates(score_batch, candidates, batch_size=3)
    assert ranks.tolist() == [1, 0, 2, 0]
    assert seen_rows == [(0, 3), (3, 4)]
