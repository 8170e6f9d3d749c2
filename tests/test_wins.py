"""Who wins where: history-length buckets, the saved per-row results, per-group intervals, the
figure and table, several runs and several logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smlrec.errors import ConfigError
from smlrec.evaluation.groups import (bucket_labels, history_buckets, history_lengths, history_lengths_reference,
                                      parse_edges)


def test_history_lengths_count_only_earlier_rows_of_the_user():
    # log order: u7 u3 u7 u7 u3 u9 u7
    users = np.array([7, 3, 7, 7, 3, 9, 7])
    assert history_lengths(users).tolist() == [0, 0, 1, 2, 1, 0, 3]
    assert history_buckets(history_lengths(users), (0, 1, 3)).tolist() == [0, 0, 1, 1, 1, 0, 2]


def test_history_lengths_equal_the_slow_twin():
    rng = np.random.default_rng(4)
    users = rng.integers(0, 50, 3000)
    np.testing.assert_array_equal(history_lengths(users), history_lengths_reference(users))


def test_default_buckets_and_their_labels():
    assert bucket_labels() == ["0", "1-4", "5-19", "20+"]
    lengths = np.array([0, 1, 4, 5, 19, 20, 300])
    assert history_buckets(lengths).tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert parse_edges("0,2") == (0, 2) and bucket_labels((0, 2)) == ["0-1", "2+"]
    for bad in ("1,5", "0,5,5", "0,x"):
        with pytest.raises(ConfigError, match="history buckets"):
            parse_edges(bad)
