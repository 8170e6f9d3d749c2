"""The replay is test-then-train, and its records and summary add up."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from smlrec.config import replay_settings
from smlrec.data.candidates import CandidateStore
from smlrec.data.loading import load_timeline
from smlrec.evaluation.metrics import METRIC_NAMES, metrics_from_ranks, positive_ranks
from smlrec.experiment.replay import replay
from smlrec.experiment.results import periods_frame, summary_frame
from smlrec.strategies import STRATEGIES, Strategy, register

from helpers import write_generic_log

EVENTS: list[tuple] = []


@dataclass(frozen=True)
class RecordingSettings:
    pass


def recorded_scores(candidates: torch.Tensor) -> torch.Tensor:
    """A fixed, candidate-dependent scoring so that ranks vary (and can be recomputed here)."""
    return ((candidates * 7919) % 101).float()


class RecordingStrategy(Strategy):
    """Records every call the replay makes, in order."""

    name = "recording"

    def _start(self, pretrain, initial_state) -> None:
        EVENTS.append(("start", pretrain.index, len(pretrain)))

    def _update(self, period) -> None:
        EVENTS.append(("update", period.index, period.role, len(period)))

    def score(self, period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        EVENTS.append(("score", period.index, rows.start, rows.stop))
        return recorded_scores(candidates)

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        pass


@pytest.fixture
def recording():
    register("recording", RecordingStrategy, RecordingSettings, description="test double")
    EVENTS.clear()
    try:
        yield EVENTS
    finally:
        STRATEGIES.pop("recording", None)
        EVENTS.clear()


def _settings(tmp_path, **extra):
    path = write_generic_log(tmp_path / "log.csv", n_rows=283, seed=5)
    layer = {"data": {"path": str(path), "periods": 7},
             "plan": {"pretrain": 2, "offline": 2, "validation": 1, "test": 2},
             "strategies": ["recording"], "pretrain": {"epochs": 1}, "mf": {"dim": 8},
             "threads": 1, "n_negatives": 50, "eval_batch_size": 16, "seed": 3,
             "cache_dir": str(tmp_path / "cache")}
    layer.update(extra)
    return replay_settings(layer)


def test_replay_is_test_then_train(tmp_path, recording):
    settings = _settings(tmp_path)
    result = replay(settings, progress=False)
    timeline = result.timeline
    sizes = [len(p) for p in timeline.periods]
    assert recording[0] == ("start", 0, sizes[0] + sizes[1])
    # Order of calls, with consecutive score batches of a period merged.
    order = []
    for event in recording[1:]:
        step = (event[0], event[1])
        if not order or order[-1] != step:
            order.append(step)
    assert order == [("update", 2), ("update", 3), ("score", 4), ("update", 4), ("score", 5),
                     ("update", 5), ("score", 6)]
    # Each scored period is scored before it is given to update; the last is never used for update.
    for index in (4, 5, 6):
        scores = [k for k, e in enumerate(recording) if e[0] == "score" and e[1] == index]
        updates = [k for k, e in enumerate(recording) if e[0] == "update" and e[1] == index]
        assert scores and (not updates or max(scores) < min(updates))
    assert not any(e[0] == "update" and e[1] == 6 for e in recording)
    # The score batches cover each scored period's rows exactly once, in order.
    for index in (4, 5, 6):
        spans = [(e[2], e[3]) for e in recording if e[0] == "score" and e[1] == index]
        assert spans[0][0] == 0 and spans[-1][1] == sizes[index]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert len(spans) == -(-sizes[index] // 16)
    # Updates receive the whole period with its role.
    updates = [e for e in recording if e[0] == "update"]
    assert [(e[2], e[3]) for e in updates] == [("offline", sizes[2]), ("offline", sizes[3]),
                                               ("validation", sizes[4]), ("test", sizes[5])]


def test_records_roles_counts_and_metrics(tmp_path, recording):
    settings = _settings(tmp_path)
    result = replay(settings, progress=False)
    timeline = result.timeline
    records = result.records
    assert [(r.strategy, r.period, r.role, r.interactions) for r in records] == [
        ("recording", 4, "validation", len(timeline.periods[4])),
        ("recording", 5, "test", len(timeline.periods[5])),
        ("recording", 6, "test", len(timeline.periods[6]))]
    assert all(np.isfinite(r.update_seconds) and r.update_seconds >= 0 for r in records)
    # Metrics recomputed here from the shared candidates and the recorded scoring.
    store = CandidateStore(timeline, settings.seed, settings.n_negatives, settings.cache_dir)
    for record in records:
        cands = torch.from_numpy(np.asarray(store.get(timeline.periods[record.period]), dtype=np.int64))
        ranks = positive_ranks(recorded_scores(cands.clamp_min(0)), cands[:, 1:] >= 0).numpy()
        np.testing.assert_array_equal(record.ranks, ranks)
        assert record.metrics == pytest.approx(metrics_from_ranks(ranks))
        assert sum(g["interactions"] for g in record.breakdown) == record.interactions
    # Not a degenerate scorer: some hits, some misses.
    assert 0 < np.mean([r.metrics["recall@10"] for r in records]) < 1


def test_summary_is_the_interaction_weighted_mean_of_test_periods(tmp_path, recording):
    result = replay(_settings(tmp_path), progress=False)
    periods = periods_frame(result.records)
    summary = summary_frame(periods)
    assert list(summary["strategy"]) == ["recording"]
    test_rows = periods[periods["role"] == "test"]
    weights = test_rows["interactions"].to_numpy(dtype=float)
    # 283 rows in 7 periods: the test periods have 40 and 41 rows, so micro != plain mean.
    assert list(weights) == [40, 41]
    assert test_rows["ndcg@10"].iloc[0] != test_rows["ndcg@10"].iloc[1]
    assert summary.loc[0, "ndcg@10"] != pytest.approx(test_rows["ndcg@10"].mean(), rel=1e-9, abs=0)
    for metric in METRIC_NAMES:
        expected = float((test_rows[metric] * weights).sum() / weights.sum())
        assert summary.loc[0, metric] == pytest.approx(expected)
    assert summary.loc[0, "test_interactions"] == int(weights.sum())


def test_candidates_are_cached_and_shared(tmp_path):
    settings = _settings(tmp_path)
    timeline = load_timeline(settings)
    period = timeline.periods[5]
    first = np.array(CandidateStore(timeline, 3, 50, tmp_path / "c").get(period))
    store = CandidateStore(timeline, 3, 50, tmp_path / "c")
    assert store.path(period).exists()
    np.testing.assert_array_equal(store.get(period), first)
    # a damaged cache file is regenerated, to the same lists
    store.path(period).write_bytes(b"garbage")
    np.testing.assert_array_equal(CandidateStore(timeline, 3, 50, tmp_path / "c").get(period), first)
    assert not list((tmp_path / "c").rglob("*.tmp"))
    other_seed = np.array(CandidateStore(timeline, 4, 50, tmp_path / "c").get(period))
    assert (other_seed != first).any()


def test_unknown_strategy_is_a_config_error(tmp_path):
    from smlrec.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        replay(_settings(tmp_path, strategies=["nope"]), progress=False)


def test_protocols_share_one_training_and_sampled_stays_identical(tmp_path):
    """One replay scores every protocol; the strategies are updated once per period, and the
    sampled records are exactly those of a sampled-only replay."""
    names = ["pop", "fine-tune"]
    alone = replay(_settings(tmp_path, strategies=names), progress=False)
    both = replay(_settings(tmp_path, strategies=names, protocols=["sampled", "full", "auc"]),
                  progress=False)
    sampled = [r for r in both.records if r.protocol == "sampled"]
    assert [(r.strategy, r.period) for r in sampled] == [(r.strategy, r.period) for r in alone.records]
    for a, b in zip(alone.records, sampled):
        np.testing.assert_array_equal(a.ranks, b.ranks)
        assert a.metrics == b.metrics
    by_key = {(r.strategy, r.period, r.protocol): r for r in both.records}
    for strategy in names:
        for period in (4, 5, 6):
            full, sample = by_key[(strategy, period, "full")], by_key[(strategy, period, "sampled")]
            # the sampled negatives are part of the full pool: a full rank is never better
            assert (full.ranks >= sample.ranks).all()
            assert full.metrics["recall@20"] <= sample.metrics["recall@20"]
            auc = by_key[(strategy, period, "auc")]
            assert auc.pair_scores.shape == (auc.interactions, 2) and auc.ranks is None
            assert 0.0 <= auc.metrics["auc"] <= 1.0
            assert np.isnan(auc.metrics["logloss"]) == (strategy == "pop")
            assert all(np.isfinite(r.scoring_seconds) for r in (full, sample, auc))


def test_results_directory_with_protocols_and_intervals(tmp_path):
    from smlrec.experiment.results import write_results
    import pandas as pd

    result = replay(_settings(tmp_path, strategies=["pop", "fine-tune"], protocols=["sampled", "auc"],
                              bootstrap_resamples=50), progress=False)
    out = write_results(tmp_path / "run", result)
    periods = pd.read_csv(out / "periods.csv")
    assert list(dict.fromkeys(periods["protocol"])) == ["sampled", "auc"]
    assert periods.loc[periods["protocol"] == "auc", "recall@20"].isna().all()
    assert periods.loc[periods["protocol"] == "sampled", "auc"].isna().all()
    summary = pd.read_csv(out / "summary.csv")
    assert list(zip(summary["protocol"], summary["strategy"])) == [
        ("sampled", "pop"), ("sampled", "fine-tune"), ("auc", "pop"), ("auc", "fine-tune")]
    sampled = summary[summary["protocol"] == "sampled"]
    assert (sampled["recall@20_lo"] <= sampled["recall@20"]).all()
    assert (sampled["recall@20"] <= sampled["recall@20_hi"]).all()
    auc = summary[summary["protocol"] == "auc"].set_index("strategy")
    assert auc.loc["fine-tune", "auc_lo"] <= auc.loc["fine-tune", "auc"] <= auc.loc["fine-tune", "auc_hi"]
    assert np.isnan(auc.loc["pop", "logloss"]) and np.isnan(auc.loc["pop", "logloss_lo"])
    significance = pd.read_csv(out / "significance.csv")
    assert set(significance["protocol"]) == {"sampled", "auc"}
    assert significance["p_value"].dropna().between(0, 1).all()
    config = json.loads((out / "config.json").read_text())
    assert set(config["scoring_seconds"]) == {"sampled", "auc"}
    # the same seed gives the same intervals
    again = write_results(tmp_path / "again", result)
    pd.testing.assert_frame_equal(pd.read_csv(again / "summary.csv"), summary)


def test_strategy_lists_expand_default_and_all_and_refuse_unknown_names():
    from smlrec.config import ReplaySettings
    from smlrec.errors import ConfigError
    from smlrec.experiment.replay import resolve_strategies
    from smlrec.strategies import STRATEGIES, default_strategies

    assert resolve_strategies(ReplaySettings(strategies=())) == default_strategies()
    assert resolve_strategies(ReplaySettings(strategies=("all",))) == list(STRATEGIES)
    assert "ease" not in default_strategies()
    assert resolve_strategies(ReplaySettings(strategies=("default", "ease"))) == [*default_strategies(), "ease"]
    assert resolve_strategies(ReplaySettings(strategies=("sml", "default"))) == \
        ["sml", *[n for n in default_strategies() if n != "sml"]]
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        resolve_strategies(ReplaySettings(strategies=("default", "nope")))
