"""Settings: defaults, TOML, flags over TOML, --set, and ConfigErrors that name the key."""

from __future__ import annotations

import pytest

from smlrec.cli import build_parser
from smlrec.cli.common import settings_layers
from smlrec.config import (DataSettings, MFSettings, ReplaySettings, build, load_toml,
                           parse_assignment, replay_settings, to_dict)
from smlrec.data.periods import Plan
from smlrec.errors import ConfigError
from smlrec.strategies import strategy_settings


def _layers(*argv: str) -> list[dict]:
    return settings_layers(build_parser().parse_args(["replay", *argv]))


def test_defaults():
    s = replay_settings()
    assert s == ReplaySettings()
    assert s.seed == 2020 and s.n_negatives == 999 and s.strategies == ()
    assert s.plan == Plan(5, 8, 2, 5)
    assert s.mf == MFSettings(dim=64, lr=0.01, batch_size=1024, init_std=0.1, sparse=True)
    assert s.data.periods == 20 and s.data.path is None and s.data.timezone == "UTC"
    assert s.pretrain.epochs == 20
    assert replay_settings(*_layers()) == ReplaySettings()


def test_toml_loading(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seed = 7\nstrategies = ["fine-tune"]\n[data]\nevery = "8h"\n'
                    'day_cuts = [10, 17.5]\n[plan]\npretrain = 1\noffline = 0\nvalidation = 1\n'
                    'test = 3\n[mf]\ndim = 16\nsparse = false\n[strategy.fine-tune]\nepochs = 2\n')
    s = replay_settings(load_toml(path))
    assert s.seed == 7 and s.strategies == ("fine-tune",)
    assert s.data.every == "8h" and s.data.day_cuts == (10.0, 17.5)
    assert s.plan == Plan(1, 0, 1, 3)
    assert s.mf.dim == 16 and s.mf.sparse is False and s.mf.lr == 0.01
    assert s.strategy == {"fine-tune": {"epochs": 2}}


def test_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)


def test_flags_override_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seed = 7\n[data]\nperiods = 30\nmin_rating = 3.0\n[plan]\npretrain = 10\n'
                    'offline = 10\nvalidation = 5\ntest = 5\n[pretrain]\nepochs = 9\n')
    s = replay_settings(*_layers("--config", str(path), "--seed", "3", "--periods", "8",
                                 "--plan", "2,3,1,2", "--pretrain-epochs", "1"))
    assert s.seed == 3 and s.data.periods == 8 and s.plan == Plan(2, 3, 1, 2)
    assert s.pretrain.epochs == 1
    assert s.data.min_rating == 3.0  # not given as a flag: the TOML value stays


def test_periods_flag_overrides_toml_calendar_windows(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[data]\nevery = "1D"\n')
    s = replay_settings(*_layers("--config", str(path), "--periods", "8"))
    assert s.data.periods == 8 and s.data.every is None and s.data.day_cuts is None


def test_every_flag_overrides_toml_day_cuts(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[data]\nday_cuts = [10, 17]\n')
    s = replay_settings(*_layers("--config", str(path), "--every", "8h"))
    assert s.data.every == "8h" and s.data.day_cuts is None
    s = replay_settings(*_layers("--day-cuts", "9,18", "--timezone", "Europe/Oslo"))
    assert s.data.day_cuts == (9.0, 18.0) and s.data.timezone == "Europe/Oslo"


def test_set_overrides_flags_and_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("seed = 7\n")
    s = replay_settings(*_layers("--config", str(path), "--seed", "3", "--set", "seed=11",
                                 "--set", "mf.lr=0.02", "--set", "strategy.fine-tune.epochs=1"))
    assert s.seed == 11 and s.mf.lr == 0.02 and s.strategy["fine-tune"] == {"epochs": 1}


@pytest.mark.parametrize("text, expected", [
    ("seed=5", {"seed": 5}),
    ("mf.lr=0.02", {"mf": {"lr": 0.02}}),
    ("data.drop_empty=true", {"data": {"drop_empty": True}}),
    ("data.day_cuts=[10, 17]", {"data": {"day_cuts": [10, 17]}}),
    ('strategies=["a", "b"]', {"strategies": ["a", "b"]}),
    ("device=cuda", {"device": "cuda"}),
    ("data.path=/tmp/x y.csv", {"data": {"path": "/tmp/x y.csv"}}),
    ('data.timezone="Europe/Oslo"', {"data": {"timezone": "Europe/Oslo"}}),
    ("strategy.sml.rounds=5", {"strategy": {"sml": {"rounds": 5}}}),
    ("data.sep==", {"data": {"sep": "="}}),
])
def test_parse_assignment(text, expected):
    assert parse_assignment(text) == expected


@pytest.mark.parametrize("text", ["seed", "=5", ".=5"])
def test_parse_assignment_errors(text):
    with pytest.raises(ConfigError, match="--set"):
        parse_assignment(text)


def test_set_values_are_coerced_by_type():
    s = replay_settings(parse_assignment("data.user_col=123"), parse_assignment("data.drop_empty=yes"),
                        parse_assignment("data.day_cuts=10,17"), parse_assignment("strategies=a,b"))
    assert s.data.user_col == "123" and s.data.drop_empty is True
    assert s.data.day_cuts == (10.0, 17.0) and s.strategies == ("a", "b")


@pytest.mark.parametrize("layer, key", [
    ({"bogus": 1}, "bogus"),
    ({"mf": {"dimm": 3}}, "dimm"),
    ({"data": {"colour": "red"}}, "colour"),
    ({"plan": {"tests": 3}}, "tests"),
])
def test_unknown_keys(layer, key):
    with pytest.raises(ConfigError, match=key):
        replay_settings(layer)


@pytest.mark.parametrize("layer, key", [
    ({"seed": "abc"}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"mf": {"dim": 1.5}}, "mf.dim"),
    ({"mf": {"lr": "fast"}}, "mf.lr"),
    ({"mf": {"sparse": "maybe"}}, "mf.sparse"),
    ({"data": {"periods": [3]}}, "data.periods"),
    ({"data": {"path": ["a"]}}, "data.path"),
    ({"data": {"day_cuts": ["ten"]}}, "data.day_cuts"),
    ({"strategies": 3}, "strategies"),
    ({"plan": {"pretrain": "x"}}, "plan.pretrain"),
    ({"mf": 3}, "mf"),
    ({"strategy": [1]}, "strategy"),
])
def test_wrong_types(layer, key):
    with pytest.raises(ConfigError) as info:
        replay_settings(layer)
    assert str(info.value).startswith(key)


def test_plan_checks_are_config_errors():
    with pytest.raises(ConfigError, match="pretrain"):
        replay_settings({"plan": {"pretrain": 0}})


def test_strategy_settings_presets_and_errors():
    assert strategy_settings("full-retrain").epochs == 5
    assert strategy_settings("full-retrain", {"epochs": 2}).epochs == 2
    with pytest.raises(ConfigError, match="epoch"):
        strategy_settings("full-retrain", {"epoch": 2})
    with pytest.raises(ConfigError, match="strategy.fine-tune.epochs"):
        strategy_settings("fine-tune", {"epochs": "many"})
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        strategy_settings("nope")


def test_build_and_to_dict_round_trip():
    s = replay_settings({"data": {"day_cuts": [10, 17]}, "strategies": ["a"]})
    plain = to_dict(s)
    assert plain["data"]["day_cuts"] == [10.0, 17.0] and plain["strategies"] == ["a"]
    assert build(ReplaySettings, plain) == s
    assert build(DataSettings, DataSettings()) == DataSettings()


@pytest.mark.parametrize("layer, message", [
    ({"mf": {"dim": 0}}, "mf.dim: must be >= 1, got 0"),
    ({"mf": {"lr": -1}}, "mf.lr: must be > 0"),
    ({"mf": {"batch_size": 0}}, "mf.batch_size: must be >= 1"),
    ({"mf": {"init_std": -0.1}}, "mf.init_std: must be >= 0"),
    ({"pretrain": {"epochs": -1}}, "pretrain.epochs: must be >= 0"),
    ({"data": {"periods": 0}}, "data.periods: must be >= 1"),
    ({"n_negatives": 0}, "n_negatives: must be >= 1"),
    ({"eval_batch_size": 0}, "eval_batch_size: must be >= 1"),
    ({"threads": 0}, "threads: must be >= 1"),
])
def test_out_of_range_settings(layer, message):
    with pytest.raises(ConfigError) as info:
        replay_settings(layer)
    assert str(info.value).startswith(message)


def test_out_of_range_strategy_settings():
    with pytest.raises(ConfigError, match="^strategy.fine-tune.epochs: must be >= 0"):
        strategy_settings("fine-tune", {"epochs": -2})
    with pytest.raises(ConfigError, match="^strategy.full-retrain.batch_size: must be >= 1"):
        strategy_settings("full-retrain", {"batch_size": 0})
