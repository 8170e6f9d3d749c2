"""Cold-start rules: a user or item with no training interaction gets the rule's scores, never
its untrained random row; popularity counts and decay on hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smlrec.config import MFSettings
from smlrec.data.log import InteractionLog
from smlrec.data.periods import Plan, build_timeline, concat_periods
from smlrec.models.mf import candidate_scores
from smlrec.strategies import StrategyContext, create_strategy
from smlrec.strategies.cold import TrainedRows, with_cold_rows, with_cold_rows_reference
from smlrec.strategies.pretrain import pretrain_mf

MF = MFSettings(dim=8, lr=0.05, batch_size=16)


def hand_timeline():
    """Six periods of 12 rows; users 0-5 in every period, user 9 (and item 14) only in period 5,
    user 8 only in period 4; items 0-9 everywhere, item 12 first in period 3."""
    users, items = [], []
    for t in range(6):
        for k in range(12):
            users.append(k % 6)
            items.append((k + t) % 10)
        if t == 3:
            items[-1] = 12
        if t == 4:
            users[-1] = 8
        if t == 5:
            users[-2], items[-2] = 9, 14
    times = np.arange(len(users), dtype=np.int64) * 60
    log = InteractionLog.from_arrays(np.array(users), np.array(items), times)
    boundaries = np.arange(0, len(users) + 1, 12)
    return build_timeline(log, boundaries, Plan(2, 1, 1, 2))


def started(name: str, timeline, **overrides):
    context = StrategyContext(timeline.log.n_users, timeline.log.n_items, MF, seed=3, name=name,
                              pretrain_periods=timeline.plan.pretrain)
    strategy = create_strategy(name, context, overrides)
    pretrain = timeline.pretrain_data
    initial, _ = pretrain_mf(pretrain, timeline.log.n_users, timeline.log.n_items, MF, 2, 3)
    strategy.start(pretrain, initial)
    return strategy, initial


def idx(timeline, raw_user):
    return int(np.flatnonzero(timeline.log.user_ids == raw_user)[0])


@pytest.mark.parametrize("rule", ["mean", "recent", "init"])
def test_cold_rows_match_the_slow_reference(rule):
    table = torch.randn(9, 4)
    rows = TrainedRows(9)
    rows.mark(np.array([0, 1, 2, 5]))
    rows.mark(np.array([2, 3]))
    torch.testing.assert_close(with_cold_rows(table, rows, rule), with_cold_rows_reference(table, rows, rule))


def test_recent_rule_is_the_mean_of_the_latest_period_rows():
    table = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    rows = TrainedRows(6)
    rows.mark(np.array([0, 1]))
    rows.mark(np.array([2, 3]))
    out = with_cold_rows(table, rows, "recent")
    expected_cold = (table[2] + table[3]) / 2
    torch.testing.assert_close(out[4], expected_cold)
    torch.testing.assert_close(out[:4], table[:4])           # trained rows are untouched
    torch.testing.assert_close(with_cold_rows(table, rows, "mean")[5], table[:4].mean(0))


@pytest.mark.parametrize("name", ["full-retrain", "fine-tune", "spmf"])
def test_mf_baselines_serve_a_cold_user_the_recent_mean_row(name):
    timeline = hand_timeline()
    strategy, _ = started(name, timeline, epochs=1)
    for period in timeline.periods[2:5]:
        strategy.update(period)
    cold = idx(timeline, 9)                                  # first seen in period 5
    table = strategy.model.user.weight.detach()
    recent = np.unique(timeline.periods[4].users)
    expected_row = table[torch.from_numpy(recent)].mean(0)
    candidates = torch.tensor([[0, 1, 2, 3]])
    period = timeline.periods[5]
    row = int(np.flatnonzero(period.users == cold)[0])
    scores = strategy.score(period, slice(row, row + 1), candidates)
    item_table = strategy.served_tables()[1]
    torch.testing.assert_close(scores, candidate_scores(expected_row[None], item_table, candidates))
    torch.testing.assert_close(strategy.score_new_users(candidates), scores)
    init_scores = candidate_scores(table[cold][None], item_table, candidates)
    assert not torch.allclose(scores, init_scores)


def test_mf_cold_item_is_the_mean_trained_item_row_and_init_keeps_the_old_rows():
    timeline = hand_timeline()
    strategy, _ = started("fine-tune", timeline, epochs=1)
    strategy.update(timeline.periods[2])                     # item 12 appears only in period 3
    cold_item = int(np.flatnonzero(timeline.log.item_ids == 12)[0])
    items = strategy.model.item.weight.detach()
    trained = torch.from_numpy(strategy.item_rows.trained)
    assert not trained[cold_item]
    torch.testing.assert_close(strategy.served_tables()[1][cold_item], items[trained].mean(0))
    legacy, _ = started("fine-tune", timeline, epochs=1, cold_users="init", cold_items="init")
    legacy.update(timeline.periods[2])
    torch.testing.assert_close(legacy.served_tables()[1], legacy.model.item.weight.detach())


def test_pop_and_pop_recent_counts_by_hand():
    # pretrain items [0, 0, 1]; period 1 items [1, 2]; period 2 items [2, 2]
    log = InteractionLog.from_arrays(np.array([0, 1, 2, 0, 1, 2, 0]), np.array([0, 0, 1, 1, 2, 2, 2]),
                                     np.arange(7, dtype=np.int64))
    timeline = build_timeline(log, np.array([0, 3, 5, 7]), Plan(1, 0, 1, 1))
    pop, _ = started("pop", timeline)
    recent, _ = started("pop-recent", timeline, decay=0.5)
    np.testing.assert_array_equal(pop.counts, [2, 1, 0])
    for period in timeline.periods[1:]:
        pop.update(period)
        recent.update(period)
    np.testing.assert_array_equal(pop.counts, [2, 2, 3])
    # [2, 1, 0] -> 0.5 * . + [0, 1, 1] = [1, 1.5, 1] -> 0.5 * . + [0, 0, 2] = [0.5, 0.75, 2.5]
    np.testing.assert_allclose(recent.counts, [0.5, 0.75, 2.5])
    scores = recent.score(timeline.periods[2], slice(0, 2), torch.tensor([[2, 0, 1], [1, 0, 2]]))
    np.testing.assert_allclose(scores.numpy(), [[2.5, 0.5, 0.75], [0.75, 0.5, 2.5]])
    recent.grow(4, 5)
    np.testing.assert_allclose(recent.counts, [0.5, 0.75, 2.5, 0, 0])


def sml_after(timeline, rule, periods, **overrides):
    settings = {"rounds": 2, "hidden": 8, "conv_channels": 3, "conv2_channels": 2,
                "cold_users": rule, "cold_items": rule, **overrides}
    strategy, initial = started("sml", timeline, **settings)
    for period in timeline.periods[2:2 + periods]:
        strategy.update(period)
    return strategy, initial


def test_sml_transfer_rule_serves_f_of_the_carried_cold_row():
    timeline = hand_timeline()
    strategy, initial = sml_after(timeline, "transfer", 3)    # served for period 5
    cold = idx(timeline, 9)
    assert cold >= strategy.n_users_seen
    with torch.no_grad():
        c = strategy.user_cold.detach()
        expected = strategy.user_transfer(c[None], c[None])[0]
    torch.testing.assert_close(strategy.user_served[cold], expected)
    candidates = torch.tensor([[0, 1, 2]])
    torch.testing.assert_close(strategy.score_new_users(candidates),
                               candidate_scores(expected[None], strategy.item_served, candidates))
    assert not torch.allclose(strategy.user_served[cold], initial["user"][cold])


def test_sml_transfer_rule_carries_the_cold_row_through_the_final_transfer():
    timeline = hand_timeline()
    strategy, _ = sml_after(timeline, "transfer", 1)
    before = strategy.user_cold.detach().clone()
    strategy.update(timeline.periods[3])                       # finishes period 2: c := f(c, c)
    with torch.no_grad():
        expected = strategy.user_transfer(before[None], before[None])[0]
    # the served row is f of the new c with the same (final) transfer: one more application
    with torch.no_grad():
        served = strategy.user_transfer(expected[None], expected[None])[0]
    torch.testing.assert_close(strategy.user_cold.detach(), expected)
    torch.testing.assert_close(strategy.user_served[idx(timeline, 9)], served)


def test_sml_learned_rule_serves_the_learned_row_and_trains_it_on_new_users():
    timeline = hand_timeline()
    strategy, initial = sml_after(timeline, "learned", 1)
    first = strategy.user_cold.detach().clone()
    pretrained = initial["user"][:strategy.n_users_seen].mean(0)
    strategy.update(timeline.periods[3])
    strategy.update(timeline.periods[4])                       # step 2 on period 4: user 8 is new
    assert not torch.allclose(strategy.user_cold.detach(), first)
    torch.testing.assert_close(strategy.user_served[idx(timeline, 9)], strategy.user_cold.detach())
    torch.testing.assert_close(first, pretrained)          # it starts as the mean pretrained row


def test_sml_untrained_rule_keeps_the_initial_row():
    timeline = hand_timeline()
    strategy, initial = sml_after(timeline, "untrained", 3)
    cold = idx(timeline, 9)
    torch.testing.assert_close(strategy.user_served[cold], initial["user"][cold])


def test_sml_every_row_transforms_untrained_rows_and_refuses_to_grow():
    timeline = hand_timeline()
    strategy, initial = sml_after(timeline, "every-row", 2)
    cold = idx(timeline, 9)
    assert not torch.allclose(strategy.user_served[cold], initial["user"][cold])
    with pytest.raises(Exception, match="every-row"):
        strategy.grow(strategy.n_users + 1, strategy.n_items)


def test_sequential_cold_user_rule_uses_counts_of_the_rows_it_learned_from():
    timeline = hand_timeline()
    strategy, _ = started("gru4rec", timeline, dim=4, hidden=4, start_epochs=1, cold_decay=0.5)
    strategy.update(timeline.periods[2])
    pretrain_counts = np.bincount(concat_periods(timeline.periods[:2]).items, minlength=timeline.log.n_items)
    period_counts = np.bincount(timeline.periods[2].items, minlength=timeline.log.n_items)
    candidates = torch.tensor([[0, 1, 2, 3, 10]])
    expected = (0.5 * pretrain_counts + period_counts)[candidates[0].numpy()]
    np.testing.assert_allclose(strategy.score_new_users(candidates)[0].numpy(), expected)


# ----------------------------------------------------------------------------------------------
# Warm / cold splits of the scored rows

def test_warm_cold_split_on_a_hand_built_timeline(tmp_path):
    from smlrec.data.candidates import CandidateStore
    from smlrec.experiment.replay import iter_replay
    from smlrec.config import replay_settings

    timeline = hand_timeline()                       # periods 3 (validation), 4 and 5 (test) scored
    settings = replay_settings({"n_negatives": 5, "cache_dir": str(tmp_path), "mf": {"dim": 8}})
    initial, _ = pretrain_mf(timeline.pretrain_data, timeline.log.n_users, timeline.log.n_items, MF, 1, 3)
    store = CandidateStore(timeline, settings.seed, settings.n_negatives, settings.cache_dir)
    records = list(iter_replay(timeline, settings, ["pop"], initial, store, progress=False))
    by_period = {r.period: r for r in records}
    # period 4: user 8 is first seen there (its row is cold), every other row warm
    assert by_period[4].segments["cold"]["interactions"] == 1
    assert by_period[4].segments["warm"]["interactions"] == 11
    # period 5: user 9 (with the brand-new item 14) is cold; user 8 had a row in period 4: warm
    assert by_period[5].segments["cold"]["interactions"] == 1
    groups = {(g["user_group"], g["item_group"]): g["interactions"] for g in by_period[5].warm_cold}
    assert groups == {("warm", "warm"): 11, ("warm", "cold"): 0, ("cold", "warm"): 0, ("cold", "cold"): 1}
    # period 3: item 12 is new there (a warm user's row with a cold item)
    groups = {(g["user_group"], g["item_group"]): g["interactions"] for g in by_period[3].warm_cold}
    assert groups[("warm", "cold")] == 1 and groups[("cold", "warm")] == groups[("cold", "cold")] == 0
    ranks = by_period[5].ranks
    cold_row = int(np.flatnonzero(timeline.periods[5].users == idx(timeline, 9))[0])
    assert by_period[5].segments["cold"]["recall@5"] == float(ranks[cold_row] < 5)


def test_summary_micro_averages_each_segment_over_its_own_rows():
    import pandas as pd
    from smlrec.experiment.results import summary_frame

    periods = pd.DataFrame({
        "strategy": ["a", "a"], "period": [1, 2], "role": ["test", "test"], "label": ["", ""],
        "interactions": [10, 30], "update_seconds": [1.0, 3.0],
        "warm_interactions": [8, 0], "cold_interactions": [2, 30],
        **{f"{m}": [0.5, 0.25] for m in ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20")},
        **{f"{m}_warm": [0.5, float("nan")] for m in ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20")},
        **{f"{m}_cold": [1.0, 0.1] for m in ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20")},
    })
    row = summary_frame(periods).iloc[0]
    assert row["recall@20"] == pytest.approx((10 * 0.5 + 30 * 0.25) / 40)
    assert row["recall@20_warm"] == pytest.approx(0.5)                 # period 2 has no warm row
    assert row["recall@20_cold"] == pytest.approx((2 * 1.0 + 30 * 0.1) / 32)
    assert (row["warm_interactions"], row["cold_interactions"]) == (8, 32)


def test_warm_cold_table_marks_strategies_below_the_popularity_floor():
    import pandas as pd
    from smlrec.report.tables import BELOW_FLOOR, segment_text

    columns = [f"{m}{s}" for s in ("", "_warm", "_cold") for m in ("recall@20", "ndcg@20")]
    table = pd.DataFrame([[0.3, 0.1, 0.2, 0.1, 0.35, 0.12, 5, 10],
                          [0.2, 0.1, 0.4, 0.2, 0.10, 0.05, 5, 10],
                          [0.25, 0.09, 0.1, 0.05, 0.3, 0.1, 5, 10]],
                         index=pd.Index(["pop-recent", "sml", "pop"], name="strategy"),
                         columns=[*columns, "warm_interactions", "cold_interactions"])
    text = segment_text(table)
    sml = text.rows[1]
    assert sml[1] == f"0.2000 {BELOW_FLOOR}"          # all rows: below pop-recent's 0.3
    assert sml[3] == "0.4000"                          # warm users: above the floor
    assert sml[5].endswith(BELOW_FLOOR)                # cold users: below
    assert not any(cell.endswith(BELOW_FLOOR) for cell in text.rows[0] + text.rows[2])


@pytest.mark.parametrize("new_rows", ["cold", "init"])
def test_sml_new_rows_decides_what_a_newly_seen_id_starts_from(new_rows):
    """Item 12 is first seen in period 3: when update(3) finishes period 2 and begins period 3, its
    W_prev row is the carried cold row ("cold") or its own initial row ("init"); in both cases an
    id not seen yet (user 8) is served f(c, c), so the cold users' rule is the same."""
    timeline = hand_timeline()
    # served for period 4
    strategy, initial = sml_after(timeline, "transfer", 2, new_users=new_rows, new_items=new_rows)
    item = int(np.flatnonzero(timeline.log.item_ids == 12)[0])
    assert item < strategy.n_items_seen
    expected = strategy.item_cold.detach() if new_rows == "cold" else initial["item"][item]
    torch.testing.assert_close(strategy.item_prev[item], expected)
    user = idx(timeline, 8)
    assert user >= strategy.n_users_seen
    with torch.no_grad():
        c = strategy.user_cold.detach()
        torch.testing.assert_close(strategy.user_served[user], strategy.user_transfer(c[None], c[None])[0])
    unseen_prev = strategy.user_prev[user]
    if new_rows == "init":
        torch.testing.assert_close(unseen_prev, initial["user"][user])
    else:
        torch.testing.assert_close(unseen_prev, c)


def test_sml_new_rows_init_keeps_the_pretrained_tables_unseen_rows_included():
    """With "init", W_prev after the first update is the pretrained tables, unseen rows included, as
    under "untrained" ("cold" writes c into the unseen rows): the rules differ only in what unseen
    ids are served and trained against."""
    timeline = hand_timeline()
    init, initial = sml_after(timeline, "transfer", 1, new_users="init", new_items="init")
    untrained, _ = sml_after(timeline, "untrained", 1)
    torch.testing.assert_close(init.user_prev, untrained.user_prev)
    torch.testing.assert_close(init.item_prev, untrained.item_prev)
    torch.testing.assert_close(init.user_prev, initial["user"])


def test_sml_new_rows_is_validated():
    from smlrec.errors import ConfigError
    from smlrec.strategies.sml import SMLSettings

    with pytest.raises(ConfigError, match="new_items must be one of cold, init"):
        SMLSettings(new_items="own")


@pytest.mark.parametrize("rule", ["transfer", "learned"])
def test_sml_new_rows_init_meets_the_contract(rule):
    from smlrec.testing import check_strategy, fast_overrides

    check_strategy("sml", {**fast_overrides("sml"), "new_users": "init", "new_items": "init",
                           "cold_users": rule, "cold_items": rule})


def test_sml_new_rows_are_set_per_table():
    """new_items = "init" with new_users = "cold": a new item starts from its own row, an unseen
    user's W_prev row is still the carried cold user row."""
    timeline = hand_timeline()
    strategy, initial = sml_after(timeline, "transfer", 2, new_items="init")
    item = int(np.flatnonzero(timeline.log.item_ids == 12)[0])
    torch.testing.assert_close(strategy.item_prev[item], initial["item"][item])
    user = idx(timeline, 8)
    torch.testing.assert_close(strategy.user_prev[user], strategy.user_cold.detach())
    assert not torch.allclose(strategy.user_prev[user], initial["user"][user])
