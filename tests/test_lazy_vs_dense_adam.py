"""Lazy (row-wise) Adam learns as well as dense Adam on the bundled MovieLens data.

The replay defaults to the fused lazy trainer for speed; dense Adam also moves the moments of
rows that are not in the batch (what the authors' code did). Stated tolerance: Recall@20 and
NDCG@20 of the pretrained model on the first offline period within 0.02 (absolute) of each other.
"""

import numpy as np
import pytest

from smlrec.config import MFSettings, ReplaySettings
from smlrec.data.loading import load_timeline
from smlrec.data.sampling import sample_candidates
from smlrec.evaluation.metrics import metrics_from_ranks, rank_candidates
from smlrec.models.mf import score_with_tables
from smlrec.random import make_rng
from smlrec.strategies.pretrain import pretrain_mf

TOLERANCE = 0.02


@pytest.mark.parametrize("epochs", [3])
def test_lazy_adam_learns_as_well_as_dense_adam(epochs):
    import torch

    timeline = load_timeline(ReplaySettings())
    period = timeline.periods[timeline.plan.pretrain]       # first offline period, never a test one
    candidates = sample_candidates(period.users, period.items, period.positions, period.items_seen,
                                   period.seen, 999, make_rng(0, "test-candidates"))
    users = torch.from_numpy(np.asarray(period.users, dtype=np.int64))
    results = {}
    for sparse in (True, False):
        state, losses = pretrain_mf(timeline.pretrain_data, timeline.log.n_users, timeline.log.n_items,
                                    MFSettings(sparse=sparse), epochs, seed=5)
        ranks = rank_candidates(lambda rows, cands: score_with_tables(state["user"], state["item"],
                                                                      users[rows], cands), candidates)
        results[sparse] = (metrics_from_ranks(ranks), losses)
    lazy, dense = results[True][0], results[False][0]
    assert losses_fall(results[True][1]) and losses_fall(results[False][1])
    for metric in ("recall@20", "ndcg@20"):
        assert abs(lazy[metric] - dense[metric]) <= TOLERANCE, (metric, lazy[metric], dense[metric])
    assert lazy["recall@20"] > 0.03   # better than random (0.02): it learned something


def losses_fall(losses: list[float]) -> bool:
    return losses[-1] < losses[0]
