"""Presets: the paper's settings as a layer between the defaults and --config / flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smlrec import strategies
from smlrec.cli import build_parser
from smlrec.cli.common import settings_layers
from smlrec.config import replay_settings
from smlrec.data.loading import load_timeline
from smlrec.errors import ConfigError
from smlrec.experiment.presets import PRESETS, preset_layer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SML_KEYS = ("rounds", "step1_epochs", "step2_epochs")


def settings_from(argv: list[str]):
    return replay_settings(*settings_layers(build_parser().parse_args(["replay", *argv])))


@pytest.fixture
def sml_registered(monkeypatch):
    """A registry with exactly two SML names, so the test does not depend on which ablations exist."""
    registry = {k: v for k, v in strategies.STRATEGIES.items() if not k.startswith("sml")}
    registry["sml"] = strategies.STRATEGIES["sml"]
    registry["sml-s"] = strategies.STRATEGIES["sml-s"]
    monkeypatch.setattr(strategies, "STRATEGIES", registry)


def test_yelp_preset_settings():
    settings = settings_from(["--preset", "yelp"])
    assert settings.data.format == "yelp"
    assert settings.data.periods == 40 and settings.data.day_cuts is None and settings.data.every is None
    plan = settings.plan
    assert (plan.pretrain, plan.offline, plan.validation, plan.test) == (10, 20, 3, 7)


def test_adressa_preset_settings():
    settings = settings_from(["--preset", "adressa"])
    assert settings.data.format == "adressa"
    assert settings.data.day_cuts == (10.0, 17.0) and settings.data.timezone == "Europe/Oslo"
    plan = settings.plan
    assert (plan.pretrain, plan.offline, plan.validation, plan.test) == (21, 27, 5, 10)
    assert plan.total == 63  # 3 periods a day for 21 days


def test_sml_settings_go_to_every_sml_strategy(sml_registered):
    yelp = settings_from(["--preset", "yelp"]).strategy
    assert set(yelp) == {"sml", "sml-s"}
    assert [yelp["sml"][k] for k in SML_KEYS] == [10, 1, 1]
    adressa = settings_from(["--preset", "adressa"]).strategy
    assert [adressa["sml-s"][k] for k in SML_KEYS] == [7, 2, 2]


def test_preset_tolerates_no_sml_strategy():
    assert "strategy" not in preset_layer("yelp", strategy_names=["full-retrain", "fine-tune"])
    layer = preset_layer("adressa", strategy_names=["fine-tune", "sml", "sml-fc"])
    assert sorted(layer["strategy"]) == ["sml", "sml-fc"]


def test_precedence_defaults_preset_config_flags(tmp_path, sml_registered):
    config = tmp_path / "run.toml"
    config.write_text("[data]\nperiods = 30\n[plan]\npretrain = 5\noffline = 15\n"
                      "validation = 3\ntest = 7\n[strategy.sml]\nrounds = 4\n")
    from_config = settings_from(["--preset", "yelp", "--config", str(config)])
    assert from_config.data.periods == 30 and from_config.plan.pretrain == 5
    assert from_config.strategy["sml"]["rounds"] == 4            # config beats preset
    assert from_config.strategy["sml"]["step1_epochs"] == 1      # the rest of the preset stays
    assert from_config.data.format == "yelp"
    flags = settings_from(["--preset", "yelp", "--config", str(config), "--periods", "20",
                           "--plan", "5,5,3,7", "--format", "csv", "--set", "strategy.sml.rounds=2"])
    assert flags.data.periods == 20 and flags.plan.offline == 5 and flags.data.format == "csv"
    assert flags.strategy["sml"]["rounds"] == 2                  # --set beats config and preset
    assert flags.mf.dim == 64                                    # untouched defaults stay


def test_periods_flag_replaces_the_preset_day_cuts():
    settings = settings_from(["--preset", "adressa", "--periods", "12", "--plan", "3,3,3,3"])
    assert settings.data.periods == 12 and settings.data.day_cuts is None


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown preset 'netflix' \(known: adressa, yelp\)"):
        settings_from(["--preset", "netflix"])
    assert sorted(PRESETS) == ["adressa", "yelp"]


def test_yelp_preset_cuts_the_fixture_into_40_periods():
    settings = settings_from(["--preset", "yelp", "--data", str(FIXTURES / "yelp" / "review_small.json")])
    timeline = load_timeline(settings)
    assert [len(p) for p in timeline.periods] == [6] * 40
    roles = [p.role for p in timeline.periods]
    assert roles == ["pretrain"] * 10 + ["offline"] * 20 + ["validation"] * 3 + ["test"] * 7


def test_adressa_preset_with_a_shorter_plan_and_k_core():
    settings = settings_from(["--preset", "adressa", "--data", str(FIXTURES / "adressa" / "three_days"),
                              "--plan", "3,3,1,2", "--min-item-interactions", "7"])
    timeline = load_timeline(settings)
    assert len(timeline.periods) == 9
    log = timeline.log
    counts = np.bincount(log.item_idx)
    assert counts.min() >= 7 and log.metadata["k_core"]["min_item_interactions"] == 7
    # items with 4, 5 x5 and 6 x8 rows go: 165 - (4 + 25 + 48) = 88 rows stay
    assert len(log) == 88 and log.metadata["k_core"]["removed"] == 77
    assert log.metadata["skipped_events_without_article_id"] == 33
