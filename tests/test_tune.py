"""smlrec tune: search spaces, the known best point of a grid, validation periods only, the TOML
round trip into replay, shared storage, parallel workers and clear errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smlrec.cli import main
from smlrec.config import replay_settings
from smlrec.data.candidates import CandidateStore
from smlrec.errors import ConfigError
from smlrec.experiment.tune import (SEARCH_SPACES, Categorical, FloatRange, IntRange, load_space_file,
                                    make_storage, parse_space, parse_spec, resolve_spaces, run_tune, to_toml,
                                    tuned_toml, write_tuned)
from smlrec.strategies import STRATEGIES
from smlrec.strategies.popularity import Popularity

T0 = 1_600_000_000
# 7 periods: 0-1 pretrain, 2 offline, 3-4 validation, 5-6 test.
PLAN = {"pretrain": 2, "offline": 1, "validation": 2, "test": 2}
FIRST_TEST = 5


def shifting_log(path: Path) -> Path:
    """A log whose best pop-recent decay is known: the pretrain periods consume items 0-19 only
    (15 rows per item), every later period items 20-39 only (3 rows per item). Before validation
    period 3 an old item's count is 15 * decay and a new item's 3, so only decay < 0.2 ranks the
    items actually consumed (the new ones) above the abandoned old ones."""
    rng = np.random.default_rng(3)
    per_period = 60
    items = [rng.permutation(np.repeat(np.arange(20), 3)) for _ in range(2)]   # two pretrain periods
    items += [rng.permutation(np.repeat(np.arange(20, 40), 3)) for _ in range(5)]
    items = np.concatenate(items)
    users = np.arange(len(items)) % 97          # many users, so negatives are never exhausted
    times = T0 + np.arange(len(items)) * 60
    pd.DataFrame({"user": users, "item": items, "time": times}).to_csv(path, index=False)
    assert len(items) == 7 * per_period
    return path


def layers(tmp_path: Path, log: Path, **extra) -> list[dict]:
    return [{"data": {"path": str(log), "periods": 7}, "plan": PLAN, "pretrain": {"epochs": 1},
             "mf": {"dim": 8, "lr": 0.05, "batch_size": 64}, "n_negatives": 10,
             "cache_dir": str(tmp_path / "cache"), "threads": 1, **extra}]


DECAY_GRID = {"pop-recent": {"decay": Categorical((0.5, 0.1, 1.0))}}


def test_grid_picks_the_known_best_decay_and_tries_every_point(tmp_path):
    log = shifting_log(tmp_path / "log.csv")
    result = run_tune(layers(tmp_path, log), ["pop-recent"], budget=10, metric="ndcg@5", sampler="grid",
                      space_overrides=DECAY_GRID)
    (tuning,) = result.tunings
    assert tuning.params == {"decay": 0.1}
    assert tuning.trials == 3                       # the grid has 3 points; the budget is capped
    assert result.validation_periods == [3, 4] and result.first_test_period == FIRST_TEST
    # The chosen value is the replay's own validation score of that point, and beats the others.
    by_decay = {}
    for decay in (0.1, 0.5, 1.0):
        point = run_tune(layers(tmp_path, log), ["pop-recent"], budget=1, metric="ndcg@5", sampler="grid",
                         space_overrides={"pop-recent": {"decay": Categorical((decay,))}})
        by_decay[decay] = point.tunings[0].value
    assert tuning.value == by_decay[0.1]
    assert by_decay[0.1] > 1.5 * max(by_decay[0.5], by_decay[1.0])


def test_tuning_never_reads_a_test_period(tmp_path, monkeypatch):
    log = shifting_log(tmp_path / "log.csv")
    seen: dict[str, set] = {"score": set(), "update": set(), "candidates": set()}

    def guard(kind, period):
        if period.index >= FIRST_TEST or period.role == "test":
            raise AssertionError(f"tuning read test period {period.index} ({kind})")
        seen[kind].add(period.index)

    score, update, get = Popularity.score, Popularity._update, CandidateStore.get
    monkeypatch.setattr(Popularity, "score",
                        lambda self, period, *a, **k: (guard("score", period), score(self, period, *a, **k))[1])
    monkeypatch.setattr(Popularity, "_update",
                        lambda self, period, *a, **k: (guard("update", period), update(self, period, *a, **k))[1])
    monkeypatch.setattr(CandidateStore, "get",
                        lambda self, period: (guard("candidates", period), get(self, period))[1])
    result = run_tune(layers(tmp_path, log), ["pop-recent"], budget=3, metric="recall@5")
    assert seen["score"] == {3, 4} and seen["candidates"] == {3, 4}
    assert seen["update"] == {2, 3}                 # trained up to the last validation period only
    assert result.tunings[0].trials == 3


def test_same_command_twice_gives_the_same_toml(tmp_path):
    log = shifting_log(tmp_path / "log.csv")
    texts = []
    for _ in range(2):
        result = run_tune(layers(tmp_path, log), ["pop-recent"], budget=5, metric="recall@5")
        texts.append(tuned_toml(result))
    assert texts[0] == texts[1]
    tuning = result.tunings[0]
    assert 0.05 <= tuning.params["decay"] <= 1.0 and tuning.trials == 5
    assert f"best of 5 trials" in texts[0] and "validation periods 3, 4 only" in texts[0]


def test_toml_round_trips_into_replay_and_the_report_says_what_was_tuned(tmp_path, capsys):
    log = shifting_log(tmp_path / "log.csv")
    toml = tmp_path / "tuned.toml"
    code = main(["tune", "--data", str(log), "--periods", "7", "--plan", "2,1,2,2", "--pretrain-epochs", "1",
                 "--set", "mf.dim=8", "--set", "n_negatives=10", "--cache-dir", str(tmp_path / "cache"),
                 "--threads", "1", "--strategies", "pop-recent,fine-tune", "--budget", "2",
                 "--space", "pop-recent.decay=0.1,0.5", "--space", "fine-tune.epochs=1:2",
                 "--space", "fine-tune.lr=0.01,0.05", "--metric", "ndcg@5", "--out", str(toml),
                 "--no-progress"])
    assert code == 0
    written = tomllib.loads(toml.read_text())
    assert written["strategies"] == ["pop-recent", "fine-tune"]
    assert written["data"] == {"path": str(log), "periods": 7}
    assert written["tuned"]["validation_periods"] == [3, 4] and written["tuned"]["metric"] == "ndcg@5"
    chosen = written["tuned"]["strategy"]
    assert set(chosen) == {"pop-recent", "fine-tune"}
    assert written["strategy"]["pop-recent"] == chosen["pop-recent"]["values"]
    assert written["strategy"]["fine-tune"] == chosen["fine-tune"]["values"]
    assert set(chosen["fine-tune"]["values"]) == {"epochs", "lr"}
    settings = replay_settings(written)          # a replay's settings, nothing unknown
    assert settings.strategy["pop-recent"]["decay"] == chosen["pop-recent"]["values"]["decay"]

    out = tmp_path / "run"
    assert main(["replay", "--config", str(toml), "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
                 "--bootstrap", "0", "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["strategies"] == ["pop-recent", "fine-tune"]
    assert config["settings"]["strategy"]["fine-tune"] == chosen["fine-tune"]["values"]
    assert config["settings"]["tuned"]["strategy"]["pop-recent"]["trials"] == 2
    periods = pd.read_csv(out / "periods.csv")
    assert set(periods.loc[periods["role"] == "test", "period"]) == {5, 6}
    report = (out / "report" / "report.md").read_text()
    assert "tuned settings: pop-recent decay=" in report and "validation ndcg@5 on periods 3, 4" in report


def test_shared_storage_resumes_and_refuses_another_setup(tmp_path):
    log = shifting_log(tmp_path / "log.csv")
    storage = str(tmp_path / "journal.log")
    first = run_tune(layers(tmp_path, log), ["pop-recent"], budget=3, metric="recall@5", storage=storage,
                     study="s")
    again = run_tune(layers(tmp_path, log), ["pop-recent"], budget=3, metric="recall@5", storage=storage,
                     study="s")   # the study is full: no new trial, the same choice
    assert again.tunings[0].trials == 3 and again.tunings[0].params == first.tunings[0].params
    more = run_tune(layers(tmp_path, log), ["pop-recent"], budget=5, metric="recall@5", storage=storage,
                    study="s")
    assert more.tunings[0].trials == 5 and more.tunings[0].value >= first.tunings[0].value
    with pytest.raises(ConfigError, match="other data, settings, space or metric"):
        run_tune(layers(tmp_path, log), ["pop-recent"], budget=3, metric="ndcg@5", storage=storage,
                 study="s")
    # Another strategy in the same command leaves pop-recent's study valid (and full).
    both = run_tune(layers(tmp_path, log), ["pop-recent", "pop"], budget=5, metric="recall@5",
                    storage=storage, study="s", space_overrides={"pop": {"decay": FloatRange(0.5, 1.0)}})
    assert [t.trials for t in both.tunings] == [5, 5]
    assert both.tunings[0].params == more.tunings[0].params


def test_parallel_workers_share_the_budget_and_cover_the_grid(tmp_path):
    import optuna

    log = shifting_log(tmp_path / "log.csv")
    grid = (0.1, 0.5, 0.9, 1.0)
    storage = str(tmp_path / "journal.log")
    result = run_tune(layers(tmp_path, log), ["pop-recent"], budget=4, metric="ndcg@5", jobs=2,
                      sampler="grid", space_overrides={"pop-recent": {"decay": Categorical(grid)}},
                      storage=storage, study="p")
    (tuning,) = result.tunings
    assert tuning.params == {"decay": 0.1}
    assert 4 <= tuning.trials <= 5                   # each worker checks the count before a trial
    study = optuna.load_study(study_name="p:pop-recent", storage=make_storage(storage))
    assert {t.params["decay"] for t in study.trials} == set(grid)   # both workers, one grid order


def test_parse_space_and_space_file(tmp_path):
    assert parse_space("pop-recent.decay=0.1:0.9") == ("pop-recent", "decay", FloatRange(0.1, 0.9))
    assert parse_space("fine-tune.epochs = 1:10") == ("fine-tune", "epochs", IntRange(1, 10))
    assert parse_space("fine-tune.lr=1e-3:1e-1:log") == ("fine-tune", "lr", FloatRange(1e-3, 1e-1, True))
    assert parse_space("sml.transfer=cnn,linear") == ("sml", "transfer", Categorical(("cnn", "linear")))
    assert parse_spec([1, 2, 3], "x") == Categorical((1, 2, 3))
    for bad, message in (("pop-recent.decay", "expected STRATEGY.SETTING=LOW:HIGH"),
                         ("decay=0.1:0.9", "expected STRATEGY.SETTING before"),
                         ("pop-recent.decay=0.9:0.1", "LOW must be below HIGH"),
                         ("pop-recent.decay=0:1:log", "log range needs LOW > 0"),
                         ("pop-recent.decay=a:1", "'a' is not a number"),
                         ("pop-recent.decay=0.1:1:lin", "LOW:HIGH:log"),
                         ("pop-recent.decay=1,1", "listed twice")):
        with pytest.raises(ConfigError, match=message):
            parse_space(bad)
    path = tmp_path / "space.toml"
    path.write_text('[fine-tune]\nepochs = "1:3"\nlr = [0.01, 0.05]\n')
    assert load_space_file(path) == {"fine-tune": {"epochs": IntRange(1, 3), "lr": Categorical((0.01, 0.05))}}
    path.write_text('decay = "0.1:1"\n')
    with pytest.raises(ConfigError, match="must be a table of settings"):
        load_space_file(path)


def test_declared_spaces_name_real_settings_and_unknown_strategies_are_skipped():
    for name in ("itemknn", "sknn", "ease", "ials"):
        assert name in SEARCH_SPACES            # declared for the strategies issue 23 adds
    assert set(SEARCH_SPACES["itemknn"]) == {"window", "alpha", "shrink", "neighbours", "history", "recency"}
    assert SEARCH_SPACES["ease"]["l2"] == FloatRange(10.0, 5000.0, True)
    registered = [name for name in SEARCH_SPACES if name in STRATEGIES]
    assert {"pop-recent", "fine-tune", "full-retrain", "spmf", "sml", "gru4rec", "caser"} <= set(registered)
    spaces = resolve_spaces(registered)          # every setting exists; every range end is valid
    assert set(spaces) == set(registered)


def test_bad_spaces_and_strategies_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="no setting 'decayy'.*known: decay"):
        resolve_spaces(["pop-recent"], {"pop-recent": {"decayy": FloatRange(0.1, 0.9)}})
    with pytest.raises(ConfigError, match=r"decay=2.0: .*decay: must be in \(0, 1\]"):
        resolve_spaces(["pop-recent"], {"pop-recent": {"decay": FloatRange(0.5, 2.0)}})
    with pytest.raises(ConfigError, match="'fine-tune' is not among the strategies tuned"):
        resolve_spaces(["pop-recent"], {"fine-tune": {"epochs": IntRange(1, 2)}})
    with pytest.raises(ConfigError, match="no search space for strategy 'pop'"):
        resolve_spaces(["pop"])
    unregistered = next(n for n in SEARCH_SPACES if n not in STRATEGIES) if any(
        n not in STRATEGIES for n in SEARCH_SPACES) else "no-such-strategy"
    with pytest.raises(ConfigError, match=f"unknown strategy '{unregistered}'"):
        resolve_spaces([unregistered])
    log = shifting_log(tmp_path / "log.csv")
    for kwargs, message in (({"budget": 0}, "--budget must be >= 1"),
                            ({"metric": "hits@3"}, "unknown metric"),
                            ({"metric": "auc"}, "not scored under protocol sampled"),
                            ({"sampler": "grid"}, "--sampler grid needs listed values; pop-recent.decay")):
        with pytest.raises(ConfigError, match=message):
            run_tune(layers(tmp_path, log), ["pop-recent"], **{"budget": 2, **kwargs})
    with pytest.raises(ConfigError, match="name the strategies to tune"):
        run_tune(layers(tmp_path, log), [], budget=2)
    no_validation = [*layers(tmp_path, log), {"plan": {"pretrain": 2, "offline": 3, "validation": 0, "test": 2}}]
    with pytest.raises(ConfigError, match="the plan has none"):
        run_tune(no_validation, ["pop-recent"], budget=2)
    assert not (tmp_path / "cache").exists()       # every error came before any replay


def test_cli_errors_exit_2_with_a_message(tmp_path, capsys):
    log = shifting_log(tmp_path / "log.csv")
    base = ["tune", "--data", str(log), "--periods", "7", "--plan", "2,1,2,2", "--budget", "2",
            "--out", str(tmp_path / "t.toml")]
    assert main([*base, "--strategies", "pop-recent", "--space", "pop-recent.decay=oops:1"]) == 2
    assert "smlrec tune: error: --space 'pop-recent.decay=oops:1': 'oops' is not a number" in capsys.readouterr().err
    assert main([*base, "--strategies", "pop-recnt"]) == 2
    assert "unknown strategy 'pop-recnt'" in capsys.readouterr().err
    assert not (tmp_path / "t.toml").exists()


def test_toml_writer_reads_back():
    mapping = {"seed": 1, "strategies": ["a-b", "c"], "data": {"path": "x \"y\"\\z", "day_cuts": [10.0, 17.5]},
               "strategy": {"fine-tune": {"lr": 1e-05, "epochs": 3, "full": True}},
               "tuned": {"strategy": {"fine-tune": {"values": {"lr": 1e-05}, "best_value": 0.25}}}}
    text = to_toml(mapping, ["a comment"])
    assert text.startswith("# a comment\n") and tomllib.loads(text) == mapping
    assert "values = {lr = 1e-05}" in text


def test_write_tuned_replaces_the_file_atomically(tmp_path):
    log = shifting_log(tmp_path / "log.csv")
    result = run_tune(layers(tmp_path, log), ["pop-recent"], budget=1, metric="recall@5")
    path = tmp_path / "out" / "tuned.toml"
    path.parent.mkdir()
    path.write_text("old")
    write_tuned(result, path)
    assert tomllib.loads(path.read_text())["strategies"] == ["pop-recent"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["tuned.toml"]   # no temporary left
