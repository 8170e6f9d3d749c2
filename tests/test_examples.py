"""The example plug-in (examples/cooccurrence.py): it runs from the command line without editing
smlrec, passes the contract suite through smlrec.testing, and reads only the history it may."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import smlrec.strategies as strategies_module
from smlrec.cli import main
from smlrec.strategies import STRATEGIES
from smlrec.testing import ContractWorld, check_strategy

from helpers import write_generic_log

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "examples.cooccurrence:LastItemCooccurrence"


@pytest.fixture(autouse=True)
def _registry_restored(monkeypatch):
    """Plug-ins registered here leave the registry as it was; the repository root is importable."""
    monkeypatch.syspath_prepend(str(REPO))
    before = dict(STRATEGIES)
    yield
    STRATEGIES.clear()
    STRATEGIES.update(before)


def cooccurrence():
    from examples import cooccurrence as module

    return module


def test_the_cli_runs_the_plug_in(tmp_path, monkeypatch, capsys):
    """`smlrec replay --plugin examples.x:Class --strategies cooc,pop` from the repository root."""
    data = write_generic_log(tmp_path / "log.csv")
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    assert main(["replay", "--plugin", PLUGIN, "--strategies", "cooc,pop", "--data", str(data),
                 "--periods", "7", "--plan", "2,2,1,2", "--bootstrap", "0", "--no-progress", "--no-report",
                 "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary["strategy"].tolist() == ["cooc", "pop"]
    assert summary["recall@20"].between(0, 1).all()
    assert "cooc" in capsys.readouterr().out
    assert main(["strategies", "--plugin", PLUGIN]) == 0
    assert "cooc" in capsys.readouterr().out and "plug-in examples.cooccurrence" in STRATEGIES["cooc"].description


def test_a_bad_plugin_is_a_clear_error(capsys):
    assert main(["strategies", "--plugin", "examples.cooccurrence"]) == 2
    assert "expected module:Class" in capsys.readouterr().err
    assert main(["strategies", "--plugin", "examples.nowhere:X"]) == 2
    assert "cannot import examples.nowhere" in capsys.readouterr().err
    assert main(["strategies", "--plugin", "examples.cooccurrence:previous_items"]) == 2
    assert "must be a subclass" in capsys.readouterr().err


def test_an_installed_entry_point_is_found(tmp_path, monkeypatch, capsys):
    """A distribution declaring [project.entry-points."smlrec.strategies"] needs no flag."""
    dist = tmp_path / "site" / "cooc_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cooc-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[smlrec.strategies]\ncooc-installed = {PLUGIN}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(strategies_module, "_entry_points_loaded", False)
    data = write_generic_log(tmp_path / "log.csv")
    assert main(["replay", "--strategies", "cooc-installed", "--data", str(data), "--periods", "7",
                 "--plan", "2,2,1,2", "--bootstrap", "0", "--no-progress", "--no-report",
                 "--out", str(tmp_path / "run")]) == 0
    assert pd.read_csv(tmp_path / "run" / "summary.csv")["strategy"].tolist() == ["cooc-installed"]


def test_the_plug_in_meets_the_contract():
    assert check_strategy(cooccurrence().LastItemCooccurrence) == "cooc"
    assert check_strategy(cooccurrence().LastItemCooccurrence, overrides={"decay": 0.5}) == "cooc"


def test_previous_items_matches_its_slow_twin():
    module = cooccurrence()
    rng = np.random.default_rng(3)
    for _ in range(5):
        users = rng.integers(0, 15, 300)
        items = rng.integers(0, 40, 300)
        last = rng.integers(-1, 40, 15)
        np.testing.assert_array_equal(module.previous_items(users, items, last),
                                      module.previous_items_reference(users, items, last))


def test_counts_by_hand():
    """Pretrain rows a:1 a:2 b:2 b:1 a:1, so the pairs 1 -> 2 (once) and 2 -> 1 (twice); items 1
    and 2 were consumed 3 and 2 times in 5 rows; both users' last item is 1."""
    module = cooccurrence()
    from smlrec.config import MFSettings
    from smlrec.data.log import InteractionLog
    from smlrec.data.periods import Plan, build_timeline
    from smlrec.strategies import StrategyContext

    log = InteractionLog.from_arrays(["a", "a", "b", "b", "a", "b", "a"], [1, 2, 2, 1, 1, 3, 2],
                                     np.arange(7) + 1_600_000_000)
    timeline = build_timeline(log, np.array([0, 5, 7]), Plan(1, 0, 0, 1))
    context = StrategyContext(n_users=log.n_users, n_items=log.n_items, mf=MFSettings(), seed=0)
    strategy = module.LastItemCooccurrence(module.CooccurrenceSettings(), context)
    strategy.start(timeline.pretrain_data, {})
    item = {raw: index for index, raw in enumerate(log.item_ids.tolist())}
    test = timeline.periods[1]                 # rows b -> 3, then a -> 2
    cands = torch.tensor([[item[1], item[2], item[3]]] * 2)
    scores = strategy.score(test, slice(0, 2), cands).numpy()
    # after b's 1 only 2 ever came (once); the ties break by popularity / (rows + 1): 3/6, 2/6, 0
    np.testing.assert_allclose(scores[0], [0 + 3 / 6, 1 + 2 / 6, 0], rtol=1e-6)
    # a's previous item is its pretrain 1 (b's row earlier in this period is another user's)
    np.testing.assert_allclose(scores[1], [0 + 3 / 6, 1 + 2 / 6, 0], rtol=1e-6)
    strategy.update(test)                      # adds 1 -> 3 (b) and 1 -> 2 (a)
    np.testing.assert_allclose(strategy._pair_counts(np.array([item[1]]), np.array([[item[2], item[3]]])),
                               [[2, 1]])


def test_a_score_never_reads_its_own_row_or_later_rows():
    world = ContractWorld()
    name = check_strategy(cooccurrence().LastItemCooccurrence, world=world)
    strategy = world.fresh(name)
    period = world.replayed[-1]
    before = world.score(strategy, period)
    r = len(period) // 2
    altered = period.items.copy()
    altered[r:] = (altered[r:] + 7) % world.timeline.log.n_items   # row r and every later row
    after = world.score(strategy, replace(period, items=altered))
    torch.testing.assert_close(after[:r + 1], before[:r + 1], rtol=0, atol=0)
    assert not torch.equal(after, before)      # later rows do read the altered history
