"""The collapse guard: a served model whose scores tie across candidates is flagged, for any strategy."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from smlrec.evaluation.collapse import FLAT_RTOL, FlatWatch, flat_rows, flat_rows_reference
from smlrec.experiment.replay import replay
from smlrec.experiment.results import format_summary, periods_frame, summary_frame
from smlrec.strategies import STRATEGIES, register

from test_replay import RecordingSettings, RecordingStrategy, _settings


def test_flat_rows_matches_its_slow_twin_on_constructed_rows():
    scores = torch.tensor([
        [0.5, 0.5, 0.5, 0.5],                      # a tie: flat
        [3.0, 3.0 * (1 + FLAT_RTOL / 10), 3.0, 3.0],  # within float rounding of a constant: flat
        [3.0, 3.0 * (1 + FLAT_RTOL * 10), 3.0, 3.0],  # a real (small) difference: not flat
        [0.0, 0.0, 0.0, 0.0],                      # all zero: flat
        [0.0, 1e-3, 0.0, 0.0],                     # near zero but apart: not flat
        [1.0, float("nan"), 1.0, 2.0],             # NaN: flat (the model is broken)
        [-2.0, 1.0, 0.5, 0.25],                    # an ordinary row
    ])
    expected = [True, True, False, True, False, True, False]
    assert flat_rows(scores).tolist() == expected
    assert flat_rows_reference(scores) == expected
    random = torch.randn(64, 30, generator=torch.Generator().manual_seed(1))
    random[::3] = random[::3, :1]          # every third row constant
    assert flat_rows(random).tolist() == flat_rows_reference(random)
    assert sum(flat_rows(random).tolist()) == 22


def test_watch_counts_rows_of_every_block_and_passes_scores_through():
    watch = FlatWatch()
    assert math.isnan(watch.share)
    score = watch.wrap(lambda rows: torch.cat([torch.zeros(rows, 5), torch.arange(5.0).expand(rows, 5)]))
    out = score(3)
    assert out.shape == (6, 5)
    score(1)
    assert (watch.rows, watch.flat) == (8, 4)
    assert watch.share == 0.5


class ConstantStrategy(RecordingStrategy):
    """Serves the same score for every candidate: a fully collapsed model."""

    name = "constant"

    def score(self, period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        return torch.full(candidates.shape, 0.25)


@pytest.fixture
def doubles():
    register("recording", RecordingStrategy, RecordingSettings, description="test double")
    register("constant", ConstantStrategy, RecordingSettings, description="test double")
    try:
        yield
    finally:
        STRATEGIES.pop("recording", None)
        STRATEGIES.pop("constant", None)


def test_replay_flags_a_strategy_serving_constant_scores_and_not_a_normal_one(tmp_path, doubles):
    settings = _settings(tmp_path, strategies=["constant", "recording"], protocols=["sampled", "full", "auc"])
    result = replay(settings, progress=False)
    by_strategy: dict[str, list[Any]] = {}
    for record in result.records:
        by_strategy.setdefault(record.strategy, []).append(record)
    assert {r.protocol for r in by_strategy["constant"]} == {"sampled", "full", "auc"}
    assert all(r.flat_share == 1.0 and r.collapsed for r in by_strategy["constant"])
    assert all(r.flat_share < 0.5 and not r.collapsed for r in by_strategy["recording"])

    periods = periods_frame(result.records)
    assert periods.loc[periods["strategy"] == "constant", "collapsed"].all()
    assert not periods.loc[periods["strategy"] == "recording", "collapsed"].any()
    summary = summary_frame(periods)
    counts = dict(zip(summary["strategy"] + "/" + summary["protocol"], summary["collapsed_periods"]))
    assert counts == {"constant/sampled": 2, "constant/full": 2, "constant/auc": 2,
                      "recording/sampled": 0, "recording/full": 0, "recording/auc": 0}
    text = format_summary(summary)
    warnings = [line for line in text.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 3 and all("constant" in line for line in warnings)
    assert "recording" not in "\n".join(warnings)


def test_results_and_report_carry_the_flag(tmp_path, doubles):
    from smlrec.experiment.results import write_results
    from smlrec.report.document import write_report

    settings = _settings(tmp_path, strategies=["constant", "recording"])
    result = replay(settings, progress=False)
    out = write_results(tmp_path / "run", result)
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv").set_index("strategy")
    assert summary.loc["constant", "collapsed_periods"] == 2
    assert summary.loc["recording", "collapsed_periods"] == 0
    write_report([out], tmp_path / "report")
    table = (tmp_path / "report" / "table1.md").read_text()
    constant_line = next(line for line in table.splitlines() if "constant" in line)
    recording_line = next(line for line in table.splitlines() if "recording" in line)
    assert "collapsed in 2" in constant_line
    assert "collapsed" not in recording_line
