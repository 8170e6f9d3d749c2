"""Issue 25 item 5: a preset's format is named when it cannot read the file, and the first
strategy's scoring time does not include drawing or reading the shared candidates."""

from __future__ import annotations

import pandas as pd

import smlrec.experiment.replay as replay_module
from smlrec.cli import main
from smlrec.config import replay_settings
from smlrec.experiment.replay import replay

from helpers import write_generic_log


def test_a_preset_that_chose_the_format_says_so_when_the_file_does_not_read(tmp_path, capsys):
    path = tmp_path / "reviews.parquet"
    pd.DataFrame({"user_id": ["a", "b"], "business_id": ["x", "y"],
                  "date": ["2020-01-01 10:00:00", "2020-01-02 10:00:00"]}).to_parquet(path)
    assert main(["replay", "--preset", "yelp", "--data", str(path), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "line 1" in err
    assert "read as --format yelp because --preset yelp chooses that format" in err and "--format parquet" in err
    # an explicit --format is the user's choice: no note
    assert main(["replay", "--preset", "yelp", "--format", "yelp", "--data", str(path), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 2
    assert "--preset yelp chooses" not in capsys.readouterr().err


def test_candidates_and_auc_negatives_are_ready_before_the_timed_scoring(tmp_path, monkeypatch):
    path = write_generic_log(tmp_path / "log.csv", n_rows=283, seed=5)
    settings = replay_settings({"data": {"path": str(path), "periods": 7},
                                "plan": {"pretrain": 2, "offline": 2, "validation": 1, "test": 2},
                                "strategies": ["pop"], "pretrain": {"epochs": 1}, "mf": {"dim": 8},
                                "threads": 1, "n_negatives": 50, "eval_batch_size": 16, "seed": 3,
                                "protocols": ["sampled", "auc"], "cache_dir": str(tmp_path / "cache")})
    original = replay_module.score_period
    timed: list[tuple[str, int]] = []

    def checked(protocol, strategy, period, candidates, negatives, settings, *rest):
        # Called inside the timed block: whatever it needs must be there already.
        if protocol == "sampled":
            assert candidates.path(period).exists() and period.index in candidates._loaded
        else:
            assert period.index in negatives
        timed.append((protocol, period.index))
        return original(protocol, strategy, period, candidates, negatives, settings, *rest)

    monkeypatch.setattr(replay_module, "score_period", checked)
    result = replay(settings, progress=False)
    assert sorted(set(timed)) == [(p, i) for p in ("auc", "sampled") for i in (4, 5, 6)]
    assert len(result.records) == 6
