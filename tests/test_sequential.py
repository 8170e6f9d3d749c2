"""Sequential strategies: context building, no leakage, model shapes, state, no-history rows."""

import copy

import numpy as np
import pytest
import torch

from smlrec.config import MFSettings
from smlrec.data.log import InteractionLog
from smlrec.data.periods import Plan, build_timeline, concat_periods, split_equal_count
from smlrec.errors import ConfigError
from smlrec.models.caser import Caser
from smlrec.models.gru4rec import GRU4Rec, left_align
from smlrec.strategies import StrategyContext, create_strategy
from smlrec.strategies.sequential import PAD, sequence_contexts, sequence_contexts_reference


def test_contexts_hand_case():
    # user 0 had [a=5, b=6] before; rows: (0, 7), (1, 8), (0, 9), (1, 3)
    windows = np.full((2, 3), PAD)
    windows[0, 1:] = [5, 6]
    contexts, touched, new = sequence_contexts(windows, np.array([0, 1, 0, 1]), np.array([7, 8, 9, 3]))
    np.testing.assert_array_equal(contexts, [[-1, 5, 6], [-1, -1, -1], [5, 6, 7], [-1, -1, 8]])
    np.testing.assert_array_equal(touched, [0, 1])
    np.testing.assert_array_equal(new, [[6, 7, 9], [-1, 8, 3]])


@pytest.mark.parametrize("width", [1, 4])
def test_contexts_match_the_slow_reference(width):
    rng = np.random.default_rng(11)
    n_users = 9
    windows = np.full((n_users, width), PAD)
    for u in range(n_users):                  # ragged earlier histories, right-aligned
        k = rng.integers(0, width + 1)
        if k:
            windows[u, width - k:] = rng.integers(0, 40, k)
    users = rng.integers(0, n_users, 200)
    items = rng.integers(0, 40, 200)
    contexts, touched, new = sequence_contexts(windows, users, items)
    np.testing.assert_array_equal(contexts, sequence_contexts_reference(windows, users, items))
    # The new windows equal the contexts a further row of each user would see.
    probe = sequence_contexts_reference(windows, np.concatenate([users, touched]),
                                        np.concatenate([items, np.zeros_like(touched)]))
    np.testing.assert_array_equal(new, probe[len(users):])


def test_a_row_never_sees_its_own_item():
    # Every item is distinct, so the row's item could only be in its context by leakage.
    users = np.array([0, 0, 1, 0, 1, 2])
    items = np.arange(10, 16)
    contexts, _, _ = sequence_contexts(np.full((3, 5), PAD), users, items)
    assert not (contexts == items[:, None]).any()
    np.testing.assert_array_equal(contexts[3], [-1, -1, -1, 10, 11])


def test_left_align():
    aligned, lengths = left_align(torch.tensor([[-1, -1, 4, 5], [1, 2, 3, 4], [-1, -1, -1, -1]]))
    assert aligned.tolist() == [[4, 5, -1, -1], [1, 2, 3, 4], [-1, -1, -1, -1]]
    assert lengths.tolist() == [2, 4, 0]


@pytest.mark.parametrize("model", [GRU4Rec(30, dim=8, hidden=6), Caser(7, 30, dim=8, length=5, n_h=3, n_v=2)])
def test_model_output_shapes(model):
    users = torch.tensor([0, 3, 6])
    context = torch.tensor([[-1, -1, -1, 1, 2], [3, 4, 5, 6, 7], [-1, -1, -1, -1, 9]])
    assert model.score(users, context, torch.tensor([1, 2, 3])).shape == (3,)
    assert model.score(users, context, torch.randint(0, 30, (3, 11))).shape == (3, 11)


def test_gru_ignores_padding_in_front():
    model = GRU4Rec(30, dim=8, hidden=6).eval()
    short = model.encode(torch.tensor([0]), torch.tensor([[-1, -1, 4, 5]]))
    long = model.encode(torch.tensor([0]), torch.tensor([[-1, -1, -1, -1, -1, 4, 5]]))
    torch.testing.assert_close(short, long)


def test_caser_reads_only_the_last_l_items():
    model = Caser(3, 30, dim=8, length=2, n_h=2, n_v=1).eval()
    a = model.encode(torch.tensor([1]), torch.tensor([[7, 8, 4, 5]]))
    b = model.encode(torch.tensor([1]), torch.tensor([[-1, 9, 4, 5]]))
    torch.testing.assert_close(a, b)


def tiny_timeline():
    rng = np.random.default_rng(2)
    n = 600
    users = rng.integers(0, 25, n)
    items = (users * 3 + np.arange(n) % 4) % 40           # some sequential regularity
    log = InteractionLog.from_arrays(users, items, np.arange(n) * 60)
    return build_timeline(log, split_equal_count(n, 6), Plan(2, 1, 1, 2))


def make(name, timeline, **overrides):
    context = StrategyContext(timeline.log.n_users, timeline.log.n_items, MFSettings(dim=8), seed=4,
                              name=name, pretrain_periods=2)
    settings = {"dim": 8, "hidden": 8, "n_h": 2, "n_v": 2, "start_epochs": 1, "epochs": 1,
                "batch_size": 64, **overrides}
    strategy = create_strategy(name, context, settings)
    strategy.start(concat_periods(timeline.periods[:2]), {})
    return strategy


@pytest.mark.parametrize("name", ["gru4rec", "caser"])
def test_users_without_history_get_the_strategy_item_counts(name):
    timeline = tiny_timeline()
    strategy = make(name, timeline)                          # cold_users = "pop" by default
    period = timeline.periods[2]
    strategy.windows[period.users[0]] = PAD                 # forget the first row's user
    candidates = torch.randint(0, timeline.log.n_items, (3, 20))
    scores = strategy.score(period, slice(0, 3), candidates)
    assert scores.shape == (3, 20)
    counts = np.bincount(concat_periods(timeline.periods[:2]).items, minlength=timeline.log.n_items)
    np.testing.assert_array_equal(scores[0].numpy(), counts[candidates[0].numpy()])
    np.testing.assert_array_equal(strategy.score_new_users(candidates[:1])[0].numpy(), counts[candidates[0].numpy()])
    assert scores[1:].std() > 0


@pytest.mark.parametrize("name", ["gru4rec", "caser"])
def test_cold_rule_init_keeps_all_zero_scores_for_an_empty_history(name):
    timeline = tiny_timeline()
    strategy = make(name, timeline, cold_users="init", cold_items="init")
    period = timeline.periods[2]
    strategy.windows[period.users[0]] = PAD
    scores = strategy.score(period, slice(0, 3), torch.randint(0, timeline.log.n_items, (3, 20)))
    assert torch.all(scores[0] == 0) and scores[1:].std() > 0


@pytest.mark.parametrize("name", ["gru4rec", "caser"])
def test_an_untrained_item_is_scored_with_the_mean_trained_output_row(name):
    timeline = tiny_timeline()
    strategy = make(name, timeline)
    period = timeline.periods[2]
    cold_item = 7
    strategy.item_rows.trained[cold_item] = False           # as if item 7 had never been trained
    strategy._scoring = None
    trained = torch.from_numpy(strategy.item_rows.trained)
    candidates = torch.tensor([[cold_item, 3, 4]] * 3)
    scores = strategy.score(period, slice(0, 3), candidates)
    model = strategy.model
    contexts = torch.from_numpy(strategy.period_contexts(period)[:3])
    users = torch.from_numpy(period.users[:3].astype(np.int64))
    with torch.no_grad():
        if name == "caser":
            user_vectors = model.user.weight[users]
            state = model.encode(users, contexts, user_vectors)
            expected = state @ model.output.weight[trained].mean(0) + model.bias.weight[trained].mean()
        else:
            state = model.encode(users, contexts)
            expected = state @ model.output.weight[trained].mean(0)
    has_context = contexts[:, -1] != PAD
    torch.testing.assert_close(scores[has_context, 0], expected[has_context])


@pytest.mark.parametrize("name,full", [("gru4rec", False), ("caser", True), ("gru4rec", True)])
def test_state_round_trip_gives_identical_scores(name, full):
    timeline = tiny_timeline()
    a = make(name, timeline, full=full)
    a.update(timeline.periods[2])
    b = make(name, timeline, full=full)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for s in (a, b):
        s.update(timeline.periods[3])
    candidates = torch.randint(0, timeline.log.n_items, (50, 30))
    period = timeline.periods[4]
    torch.testing.assert_close(a.score(period, slice(0, 50), candidates),
                               b.score(period, slice(0, 50), candidates))
    np.testing.assert_array_equal(a.windows, b.windows)


def test_scoring_uses_the_period_s_earlier_rows_as_context():
    timeline = tiny_timeline()
    strategy = make("gru4rec", timeline)
    period = timeline.periods[4]
    contexts = strategy.period_contexts(period)
    expected, _, _ = sequence_contexts(strategy.windows, period.users, period.items)
    np.testing.assert_array_equal(contexts, expected)
    # Scoring does not move the windows; only update does.
    before = strategy.windows.copy()
    strategy.score(period, slice(0, 10), torch.zeros(10, 5, dtype=torch.long))
    np.testing.assert_array_equal(strategy.windows, before)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError):
        make("caser", tiny_timeline(), length=6)            # caser preset keeps a window of 5
    with pytest.raises(ConfigError):
        make("gru4rec", tiny_timeline(), loss="hinge")


def test_catalogue_matmul_path_equals_the_gather_path():
    from smlrec.models.gru4rec import score_items

    model = Caser(4, 30, dim=8, length=2, n_h=2, n_v=1)
    with torch.no_grad():
        model.bias.weight.normal_()
    state = torch.randn(3, 16)
    small = torch.randint(0, 30, (3, 5))          # 30 <= 16 * 5: catalogue matmul
    wide = torch.randint(0, 30, (3, 1))           # 30 > 16 * 1: gather
    for items in (small, wide):
        expected = (state[:, None, :] * model.output(items)).sum(-1) + model.bias(items).squeeze(-1)
        torch.testing.assert_close(score_items(state, model.output, model.bias, items), expected)
