import numpy as np
import pandas as pd
import pytest
import torch

from _production_data import DAY, T0, synthetic_log, tiny_settings, write_periods
from smlrec.cli import main
from smlrec.config import replay_settings
from smlrec.data.candidates import CandidateStore
from smlrec.data.loading import load_timeline
from smlrec.errors import CheckpointError, ConfigError, DataError
from smlrec.experiment.replay import iter_replay
from smlrec.models.growth import init_rows
from smlrec.production import Recommender, init_registry, recommend, update_once
from smlrec.production.registry import ModelRegistry
from smlrec.strategies.factory import make_strategy
from smlrec.strategies.pretrain import pretrain_model

N_PERIODS, HISTORY = 6, 4        # init on periods 0..3, update with 4 (and 5)


def _can_grow(name: str) -> bool:
    from smlrec.strategies import STRATEGIES
    from smlrec.strategies.base import Strategy

    return name in STRATEGIES and STRATEGIES[name].cls._grow is not Strategy._grow


# The strategies production must reproduce the replay for (every one that implements _grow).
PRODUCTION_STRATEGIES = [name for name in ("full-retrain", "fine-tune", "spmf", "sml", "pop", "pop-recent",
                                                  "itemknn", "sknn", "no-update", "ease", "ials", "sml-blend",
                                                  "sml-h", "fine-tune-h")
                         if _can_grow(name)]


def _replay_strategy(name: str, full_log, settings: dict, tmp_path):
    """The strategy a replay over periods 0..N-1 serves for the last period (updated through N-2)."""
    plan = dict(settings["plan"], test=N_PERIODS - settings["plan"]["pretrain"] - settings["plan"]["offline"])
    replay = replay_settings(settings, {"data": {"path": str(full_log), "periods": N_PERIODS}, "plan": plan,
                                        "n_negatives": 20, "cache_dir": str(tmp_path / "cache")})
    timeline = load_timeline(replay)
    initial, _ = pretrain_model(timeline.pretrain_data, timeline.log.n_users, timeline.log.n_items, replay)
    held = {}

    def factory(name):
        held["strategy"] = make_strategy(name, timeline, replay)
        return held["strategy"]

    candidates = CandidateStore(timeline, replay.seed, replay.n_negatives, replay.cache_dir)
    list(iter_replay(timeline, replay, [name], initial, candidates, progress=False, factory=factory))
    return held["strategy"], timeline


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("strategy", PRODUCTION_STRATEGIES)
def test_init_then_update_serves_the_replay_model(tmp_path, strategy, sparse):
    check_production_equals_replay(tmp_path, strategy, tiny_settings(strategy, HISTORY, sparse=sparse))


# Every base can grow its tables (new rows as a replay holds them for ids not seen yet), so
# production works for every (strategy, base) pair that grows; ASMG grows its window too.
BASE_PAIRS = [("asmg", "mf")] + [(strategy, base) for base in ("lightgcn", "ncf")
                                 for strategy in ("full-retrain", "fine-tune", "spmf", "sml", "asmg")]


@pytest.mark.parametrize(("strategy", "base"), BASE_PAIRS)
def test_init_then_update_serves_the_replay_model_on_other_bases(tmp_path, strategy, base):
    settings = dict(tiny_settings(strategy, HISTORY), base=base)
    if strategy == "sml" and base == "ncf":   # refused by default for its accuracy, not its mechanics
        settings["strategy"]["sml"]["allow_ncf"] = True
    check_production_equals_replay(tmp_path, strategy, settings)


def check_production_equals_replay(tmp_path, strategy: str, settings: dict) -> None:
    frame = synthetic_log(N_PERIODS)
    full_log = tmp_path / "full.csv"
    frame.to_csv(full_log, index=False)
    history, batches = write_periods(frame, tmp_path / "data", HISTORY)
    init_registry(history, tmp_path / "reg", strategy, settings)
    report = update_once(tmp_path / "reg", batches[0])          # period 4: the replay's last update
    assert report.version == 2 and report.period == 4 and report.new_users > 0 and report.new_items > 0

    replayed, timeline = _replay_strategy(strategy, full_log, settings, tmp_path)
    served = Recommender.from_registry(tmp_path / "reg")
    n_users, n_items = served.checkpoint.n_users, served.checkpoint.n_items
    # ids seen through period 4 get the same indices as in the replay's whole-log vocabulary (the
    # replay keeps a CSV's ids as text; production reads all-whole-number ids as numbers)
    assert served.checkpoint.user_ids.dtype.kind == "i"
    assert [str(u) for u in served.checkpoint.user_ids] == list(timeline.log.user_ids[:n_users])
    assert [str(i) for i in served.checkpoint.item_ids] == list(timeline.log.item_ids[:n_items])
    assert served.checkpoint.cumulative.rows == timeline.periods[-1].start
    users = np.arange(n_users)
    production_scores = served.scores(users)
    with torch.no_grad():  # the replay strategy's own score(), all items for every user
        replay_scores = replayed.score(_as_period(timeline, users), slice(0, n_users),
                                       torch.arange(n_items).expand(n_users, n_items))
    assert production_scores.shape == (n_users, n_items)
    assert torch.allclose(production_scores, replay_scores, atol=1e-6, rtol=0)

    # A user first seen in period 5 is unknown to the registry: production serves the strategy's
    # cold-user rule, which must be what the replay serves that (untrained) user.
    last = timeline.periods[-1]
    cold_user = int(last.users[np.flatnonzero(last.users >= n_users)[0]])
    all_items = torch.arange(n_items)[None, :]
    with torch.no_grad():
        replay_cold = replayed.score(_as_period(timeline, np.array([cold_user])), slice(0, 1), all_items)
        production_cold = served.strategy.score_new_users(all_items)
    assert torch.allclose(production_cold, replay_cold, atol=1e-6, rtol=0)
    top = recommend(tmp_path / "reg", [timeline.log.user_ids[cold_user]], k=5)
    assert top["fallback"].all()
    assert list(top["score"]) == pytest.approx(torch.topk(replay_cold[0], 5).values.tolist(), abs=1e-6)

    # An item first seen in period 5: the next update grows the tables; the grown row must score
    # as the replay's cold row of that item does, for every user.
    cold_item = int(last.items[np.flatnonzero(last.items >= n_items)[0]])
    served.strategy.grow(n_users, cold_item + 1)
    column = torch.full((n_users, 1), cold_item)
    with torch.no_grad():
        production_item = served.strategy.score(_as_period(timeline, users), slice(0, n_users), column)
        replay_item = replayed.score(_as_period(timeline, users), slice(0, n_users), column)
    assert torch.allclose(production_item, replay_item, atol=1e-6, rtol=0)


def user_moments(strategy) -> dict:
    """The Adam moments of the user table: the fused lazy trainer's or torch Adam's."""
    trainer = strategy.trainer
    if hasattr(trainer, "user_m"):
        return {"exp_avg": trainer.user_m, "exp_avg_sq": trainer.user_v}
    state = trainer.optimizer.state[strategy.model.user.weight]
    return {k: v for k, v in state.items() if torch.is_tensor(v) and v.dim() == 2}


@pytest.mark.parametrize("sparse", [True, False])
def test_mf_retrain_grow_appends_fresh_rows_and_zero_optimizer_state(sparse):
    from smlrec.config import MFSettings
    from smlrec.data.periods import Period
    from smlrec.data.pairs import PairIndex
    from smlrec.strategies import StrategyContext, create_strategy

    mf = MFSettings(dim=4, batch_size=4, sparse=sparse)
    context = StrategyContext(n_users=3, n_items=5, mf=mf, seed=11, name="fine-tune")
    strategy = create_strategy("fine-tune", context, {"epochs": 1})
    users, items = np.array([0, 1, 2, 0]), np.array([0, 1, 2, 3])
    period = Period(index=0, role="test", start=0, users=users, items=items, times=np.zeros(4, np.int64),
                    items_seen=np.array([1, 2, 3, 4]), seen=PairIndex.from_log(users, items))
    strategy.start(period, {"user": init_rows(11, "user", 0, 3, 4, 0.1), "item": init_rows(11, "item", 0, 5, 4, 0.1)})
    strategy.update(period)
    user_before = strategy.model.user.weight.detach().clone()
    moments_before = {k: v.clone() for k, v in user_moments(strategy).items()}
    strategy.grow(5, 7)
    assert (strategy.n_users, strategy.n_items) == (5, 7) and strategy.context.n_users == 5
    weight = strategy.model.user.weight
    assert torch.equal(weight[:3], user_before)
    assert torch.equal(weight[3:], init_rows(11, "user", 3, 5, 4, 0.1))       # fresh MF rows
    assert torch.equal(strategy.model.item.weight[5:], init_rows(11, "item", 5, 7, 4, 0.1))
    state = user_moments(strategy)
    assert len(moments_before) == 2
    for key, before in moments_before.items():
        assert state[key].shape == (5, 4) and torch.equal(state[key][:3], before)
        assert not state[key][3:].any()
    grown = Period(index=1, role="test", start=4, users=np.array([3, 4]), items=np.array([5, 6]),
                   times=np.zeros(2, np.int64), items_seen=np.array([6, 7]),
                   seen=PairIndex.from_log(np.array([0, 1, 2, 0, 3, 4]), np.array([0, 1, 2, 3, 5, 6])))
    strategy.update(grown)                                  # the optimiser steps the grown tables
    assert not torch.equal(strategy.model.user.weight[3:], init_rows(11, "user", 3, 5, 4, 0.1))
    with pytest.raises(ConfigError, match="cannot shrink"):
        strategy.grow(4, 7)


def test_init_rows_do_not_depend_on_the_table_size():
    whole = init_rows(5, "item", 0, 2500, 6, 0.1)
    assert torch.equal(whole[1000:2100], init_rows(5, "item", 1000, 2100, 6, 0.1))
    assert abs(float(whole.std()) - 0.1) < 0.005
    assert not torch.equal(whole[:10], init_rows(5, "user", 0, 10, 6, 0.1))


def test_a_strategy_without_grow_says_so():
    from smlrec.strategies.base import Strategy

    class Frozen(Strategy):
        name = "frozen"
        _start = _update = score = _state = _load_state = lambda *a, **k: None

    from smlrec.config import MFSettings
    from smlrec.strategies import StrategyContext

    frozen = Frozen(None, StrategyContext(n_users=2, n_items=2, mf=MFSettings(), seed=0))
    with pytest.raises(ConfigError, match="'frozen' cannot grow its tables"):
        frozen.grow(3, 2)


def _as_period(timeline, users):
    """A period whose rows are the given users (score() reads ``period.users[rows]``)."""
    last = timeline.periods[-1]
    n = len(users)
    from smlrec.data.periods import Period

    return Period(index=last.index, role=last.role, start=last.start, users=np.asarray(users, np.int64),
                  items=np.zeros(n, np.int64), times=np.full(n, last.times[0]),
                  items_seen=np.full(n, last.items_seen[0]), seen=last.seen)


@pytest.fixture()
def registry(tmp_path):
    frame = synthetic_log(N_PERIODS)
    history, batches = write_periods(frame, tmp_path / "data", HISTORY)
    init_registry(history, tmp_path / "reg", "fine-tune", tiny_settings("fine-tune", HISTORY))
    return ModelRegistry(tmp_path / "reg"), batches, frame


def test_refusals_and_force(registry, tmp_path):
    reg, batches, frame = registry
    update_once(reg, batches[0])
    retry = update_once(reg, batches[0])            # the batch version 2 was built from: a retry
    assert retry.already_applied and retry.version == 2
    assert reg.latest_version() == 2
    old = tmp_path / "old.csv"                      # period 3's times: before the last applied period
    frame.iloc[3 * 120: 3 * 120 + 10].assign(user=1).to_csv(old, index=False)
    with pytest.raises(DataError, match="precedes the last applied period"):
        update_once(reg, old)
    empty = tmp_path / "empty.csv"
    empty.write_text("user,item,time\n")
    with pytest.raises(DataError, match="empty.csv.*no rows"):
        update_once(reg, empty, force=True)          # force does not override an empty batch
    bad = tmp_path / "bad.csv"
    bad.write_text(f"user,item,time\n1,2,{T0 + 9 * DAY}\n1,,{T0 + 9 * DAY}\n")
    with pytest.raises(DataError, match="bad.csv, line 3, column 'item': missing id"):
        update_once(reg, bad, force=True)
    assert reg.latest_version() == 2                # nothing was written by the refusals
    report = update_once(reg, old, force=True)
    assert report.version == 3 and report.warnings
    with pytest.raises(DataError, match="already applied.*--force"):
        update_once(reg, batches[0])                # applied, but not by the latest version
    forced = update_once(reg, batches[0], force=True)
    assert forced.version == 4
    assert [entry["period"] for entry in reg.load().data] == [3, 4, 5, 6]


def test_update_grows_vocabularies_and_tables_in_first_appearance_order(registry, tmp_path):
    reg, batches, _ = registry
    before = reg.load()
    batch = tmp_path / "new.csv"
    pd.DataFrame({"user": [1000, "9001", 9000, 9001], "item": [7777, 5000, 7776, 7777],
                  "time": [T0 + 9 * DAY] * 4}).to_csv(batch, index=False)
    report = update_once(reg, batch)
    after = reg.load()
    assert (report.new_users, report.new_items) == (2, 2)
    assert list(after.user_ids[before.n_users:]) == [9001, 9000]        # number ids: "9001" is 9001
    assert list(after.item_ids[before.n_items:]) == [7777, 7776]
    model = after.strategy_state["model"]
    assert model["user.weight"].shape == (before.n_users + 2, 8)
    assert model["item.weight"].shape == (before.n_items + 2, 8)
    old_rows = before.strategy_state["model"]["user.weight"]
    assert model["user.weight"].shape[0] > old_rows.shape[0]
    cumulative = after.cumulative
    assert cumulative.rows == before.cumulative.rows + 4
    assert cumulative.items_seen == before.n_items + 2
    assert len(cumulative.pair_keys) == len(before.cumulative.pair_keys) + 4   # all 4 pairs are new
    assert cumulative.previous.index == report.period and len(cumulative.previous.users) == 4


def test_recommend_excludes_seen_items_and_serves_unknown_users_the_cold_rule(registry):
    reg, _, frame = registry
    history = frame.iloc[: HISTORY * 120]
    user = int(history["user"].iloc[0])
    had = set(history.loc[history["user"] == user, "item"])
    n_items = history["item"].nunique()
    top = recommend(reg, [str(user)], k=n_items)
    assert not top["fallback"].any() and not had & set(top["item"])
    assert len(top) == n_items - len(had) and list(top["rank"]) == list(range(1, len(top) + 1))
    assert top["score"].is_monotonic_decreasing
    everything = recommend(reg, [user], k=n_items, exclude_seen=False)
    assert set(everything["item"]) == set(history["item"])
    unknown = recommend(reg, ["nobody"], k=3)
    served = Recommender.from_registry(reg)
    with torch.no_grad():
        cold = served.strategy.score_new_users(torch.arange(served.checkpoint.n_items)[None, :])[0]
    top = torch.topk(cold, 3)
    assert unknown["fallback"].all() and list(unknown["score"]) == pytest.approx(top.values.tolist())
    assert list(unknown["item"]) == [served.item_ids[i] for i in top.indices.tolist()]
    with pytest.raises(DataError, match="unknown user 'nobody'"):
        recommend(reg, ["nobody"], k=3, strict=True)


def test_cli_daily_loop(tmp_path, capsys):
    frame = synthetic_log(N_PERIODS)
    history, batches = write_periods(frame, tmp_path / "data", HISTORY)
    reg = str(tmp_path / "reg")
    assert main(["init", "--data", str(history), "--registry", reg, "--strategy", "fine-tune",
                 "--periods", "4", "--plan", "2,1,0,1", "--pretrain-epochs", "1",
                 "--set", "mf.dim=8", "--set", "strategy.fine-tune.epochs=1"]) == 0
    assert main(["update", "--registry", reg, "--data", str(batches[0])]) == 0
    assert main(["update", "--registry", reg, "--data", str(batches[0])]) == 0    # an idempotent retry
    assert "already applied" in capsys.readouterr().out
    users = tmp_path / "users.txt"
    users.write_text("user\n1000\nstranger\n")
    out = tmp_path / "recs.csv"
    assert main(["recommend", "--registry", reg, "--users", str(users), "--k", "5", "--out", str(out)]) == 0
    recs = pd.read_csv(out)
    assert list(recs.columns) == ["user", "rank", "item", "score", "fallback", "version"]
    assert len(recs) == 10 and recs["version"].eq(2).all()
    assert list(recs.groupby("user")["fallback"].all().items()) == [("1000", False), ("stranger", True)]
    assert main(["recommend", "--registry", reg, "--user", "stranger", "--strict"]) == 2


def test_a_batch_with_ids_of_another_kind_is_refused(registry, tmp_path):
    reg, _, _ = registry
    from smlrec.production.update import extend_vocabulary

    with pytest.raises(DataError, match="ids are numbers but this batch's are text"):
        extend_vocabulary(reg.load().user_ids, np.array(["1000", "x"], dtype=object), np.array([0, 1]))
    mapped, vocabulary = extend_vocabulary(np.array(["a", "b"], dtype=object), np.array(["c", "b", "d"], dtype=object),
                                           np.array([0, 1, 0, 2]))
    assert list(mapped) == [2, 1, 2, 3] and list(vocabulary) == ["a", "b", "c", "d"]


def test_init_refuses_an_existing_registry_and_update_an_empty_one(registry, tmp_path):
    reg, batches, _ = registry
    with pytest.raises(ConfigError, match="already holds a registry"):
        init_registry(tmp_path / "data" / "history.csv", reg.root, "fine-tune", tiny_settings("fine-tune", HISTORY))
    with pytest.raises(CheckpointError, match="no model registry"):
        update_once(tmp_path / "nothing", batches[0])


def test_sml_new_rows_init_grows_fresh_rows_and_serves_the_replay_model(tmp_path):
    """new_rows = "init": a grown id starts from its own initial row (as the replay's untouched row),
    while production still serves unknown users and items the cold row, as the replay does."""
    settings = tiny_settings("sml", HISTORY)
    settings["strategy"]["sml"].update(new_users="init", new_items="init")
    check_production_equals_replay(tmp_path, "sml", settings)
    strategy = Recommender.from_registry(tmp_path / "reg").strategy
    n_users, n_items = strategy.n_users, strategy.n_items
    strategy.grow(n_users + 2, n_items)
    mf = strategy.context.mf
    expected = init_rows(strategy.context.seed, "user", n_users, n_users + 2, mf.dim, mf.init_std)
    torch.testing.assert_close(strategy.user_prev[n_users:], expected)
    with torch.no_grad():
        cold = strategy._cold_output("user")
    torch.testing.assert_close(strategy.user_served[n_users:], cold.expand(2, -1))
