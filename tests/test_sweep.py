"""The sensitivity sweep: grid parsing, validation-only scoring, files written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smlrec.cli import main
from smlrec.data.periods import Plan
from smlrec.errors import ConfigError
from smlrec.experiment.sweep import GridAxis, grid_points, parse_grid, point_layer, run_sweep
from smlrec.report.sweep import write_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_log(path: Path, n_users: int = 30, n_items: int = 40, n_rows: int = 600) -> Path:
    rng = np.random.default_rng(1)
    pd.DataFrame({"user": rng.integers(0, n_users, n_rows), "item": rng.integers(0, n_items, n_rows),
                  "time": np.sort(rng.integers(1_600_000_000, 1_600_000_000 + 86400 * 30, n_rows))}
                 ).to_csv(path, index=False)
    return path


def base_layers(tmp_path: Path, log: Path) -> list[dict]:
    # 7 periods: 2 pretrain, 1 offline, 2 validation (periods 3, 4), 2 test (5, 6).
    return [{"data": {"path": str(log), "periods": 7},
             "plan": {"pretrain": 2, "offline": 1, "validation": 2, "test": 2},
             "pretrain": {"epochs": 1}, "mf": {"dim": 8}, "n_negatives": 20,
             "strategies": ["fine-tune"], "strategy": {"fine-tune": {"epochs": 1}},
             "cache_dir": str(tmp_path / "cache"), "threads": 1}]


def test_parse_grid_reads_typed_values():
    assert parse_grid("mf.lr=0.005,0.01") == GridAxis("mf.lr", (0.005, 0.01))
    assert parse_grid("strategy.fine-tune.epochs = 1,3") == GridAxis("strategy.fine-tune.epochs", (1, 3))
    assert parse_grid("mf.sparse=true,false").values == (True, False)
    for bad, message in (("mf.lr", "expected KEY=v1,v2"), ("mf.lr=0.1,,0.2", "empty value"),
                         ("=1,2", "empty setting name"), ("mf.lr=1,1", "listed twice")):
        with pytest.raises(ConfigError, match=message):
            parse_grid(bad)


def test_grid_points_are_the_product_and_nest_as_settings():
    points = grid_points([GridAxis("a.x", (1, 2)), GridAxis("b", ("u", "v", "w"))])
    assert len(points) == 6 and points[0] == {"a.x": 1, "b": "u"} and points[-1] == {"a.x": 2, "b": "w"}
    assert point_layer({"strategy.fine-tune.epochs": 3, "mf.lr": 0.1}) == {
        "strategy": {"fine-tune": {"epochs": 3}}, "mf": {"lr": 0.1}}
    with pytest.raises(ConfigError, match="swept twice"):
        grid_points([GridAxis("a", (1,)), GridAxis("a", (2,))])


def test_sweep_scores_validation_periods_only_and_writes_files(tmp_path):
    log = tiny_log(tmp_path / "log.csv")
    axes = [parse_grid("strategy.fine-tune.epochs=1,2"), parse_grid("mf.lr=0.01")]
    result = run_sweep(base_layers(tmp_path, log), axes, metric="recall@20")
    table = result.table
    assert list(table["strategy.fine-tune.epochs"]) == [1, 2] and list(table["mf.lr"]) == [0.01, 0.01]
    assert list(table["strategy"]) == ["fine-tune", "fine-tune"]
    assert set(result.periods["role"]) == {"validation"}
    assert sorted(set(result.periods["period"])) == [3, 4]          # never test periods 5, 6
    sizes = result.periods.groupby("point")["interactions"].sum()
    assert list(table["validation_interactions"]) == list(sizes)
    assert result.settings[1].strategy["fine-tune"]["epochs"] == 2
    out = write_sweep(result, tmp_path / "sweep")
    written = pd.read_csv(out / "sweep.csv")
    assert len(written) == 2 and "recall@20" in written.columns
    assert (out / "sweep.png").read_bytes().startswith(PNG_MAGIC)
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["scored_role"] == "validation" and summary["metric"] == "recall@20"
    assert summary["grid"] == {"strategy.fine-tune.epochs": [1, 2], "mf.lr": [0.01]}


def test_sweep_checks_every_point_before_any_work(tmp_path):
    log = tiny_log(tmp_path / "log.csv")
    layers = base_layers(tmp_path, log)
    with pytest.raises(ConfigError, match="strategy.fine-tune: unknown setting"):
        run_sweep(layers, [parse_grid("strategy.fine-tune.epochz=1,2")])
    with pytest.raises(ConfigError, match="mf: unknown setting"):
        run_sweep(layers, [parse_grid("mf.rate=1,2")])
    with pytest.raises(ConfigError, match="unknown metric"):
        run_sweep(layers, [parse_grid("mf.lr=0.1")], metric="auc")
    no_validation = [*layers, {"plan": {"pretrain": 2, "offline": 3, "validation": 0, "test": 2}}]
    with pytest.raises(ConfigError, match="validation periods only"):
        run_sweep(no_validation, [parse_grid("mf.lr=0.1")])
    assert not (tmp_path / "cache").exists()  # nothing was replayed


def test_cli_sweep_one_key_line_plot(tmp_path, capsys):
    log = tiny_log(tmp_path / "log.csv")
    out = tmp_path / "sweep"
    code = main(["sweep", "--data", str(log), "--periods", "7", "--plan", "2,1,2,2", "--pretrain-epochs", "1",
                 "--strategies", "fine-tune", "--set", "mf.dim=8", "--set", "n_negatives=20",
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--threads", "1",
                 "--grid", "strategy.fine-tune.epochs=1,2", "--out", str(out)])
    assert code == 0
    assert len(pd.read_csv(out / "sweep.csv")) == 2
    assert (out / "sweep.png").stat().st_size > 5_000
    assert "best for fine-tune: strategy.fine-tune.epochs=" in capsys.readouterr().out
    assert Plan(2, 1, 2, 2).total == 7
