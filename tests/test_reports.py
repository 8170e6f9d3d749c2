"""Reports from results directories: table numbers, RI, bold, LaTeX, alignment, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smlrec.cli import main
from smlrec.errors import ConfigError
from smlrec.evaluation.metrics import METRIC_NAMES
from smlrec.experiment.results import PERIOD_COLUMNS, summary_frame
from smlrec.report.document import write_report
from smlrec.report.runs import combine_runs, load_run, load_runs
from smlrec.report.tables import (TextTable, breakdown_table, cost_table, latex_escape, reference_strategy,
                                  relative_improvement, table1, table1_text)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Scored periods of the synthetic runs: two validation, two test, unequal sizes.
PERIODS = [(13, "validation", "2020-01-13 00:00..2020-01-13 23:00", 50),
           (14, "validation", "2020-01-14 00:00..2020-01-14 23:00", 50),
           (15, "test", "2020-01-15 00:00..2020-01-15 23:00", 100),
           (16, "test", "2020-01-16 00:00..2020-01-16 23:00", 300)]


def metrics(value: float) -> dict[str, float]:
    """All six metrics from one number (recall@k = value * k/20, ndcg = half of recall)."""
    out = {}
    for k in (5, 10, 20):
        out[f"recall@{k}"] = value * k / 20
        out[f"ndcg@{k}"] = value * k / 40
    return out


def make_run(root: Path, name: str, per_period: dict[str, list[float]],
             periods: list[tuple] = PERIODS, seconds: dict[str, list[float]] | None = None,
             sha256: str = "ab" * 32) -> Path:
    """A results directory by hand: ``per_period[strategy][i]`` is the recall@20 of period i."""
    rows, breakdown = [], []
    for strategy, values in per_period.items():
        for i, ((period, role, label, n), value) in enumerate(zip(periods, values)):
            secs = (seconds or {}).get(strategy, [1.0] * len(periods))[i]
            rows.append({"strategy": strategy, "period": period, "role": role, "label": label,
                         "interactions": n, **metrics(value), "update_seconds": secs})
            # Groups: old/old holds 3/4 of the rows at `value`, new/new 1/4 at value/2, others empty.
            for (user_group, item_group), count, v in ((("old", "old"), n * 3 // 4, value),
                                                       (("old", "new"), 0, float("nan")),
                                                       (("new", "old"), 0, float("nan")),
                                                       (("new", "new"), n - n * 3 // 4, value / 2)):
                breakdown.append({"strategy": strategy, "period": period, "role": role,
                                  "user_group": user_group, "item_group": item_group,
                                  "interactions": count, **metrics(v)})
    out = root / name
    out.mkdir(parents=True)
    frame = pd.DataFrame(rows, columns=PERIOD_COLUMNS)
    frame.to_csv(out / "periods.csv", index=False)
    summary_frame(frame).to_csv(out / "summary.csv", index=False)
    pd.DataFrame(breakdown).to_csv(out / "breakdown.csv", index=False)
    config = {"smlrec_version": "0.1.0", "strategies": list(per_period),
              "settings": {"seed": 2020, "plan": {"pretrain": 5, "offline": 8, "validation": 2, "test": 2},
                           "mf": {"dim": 64, "lr": 0.01, "batch_size": 1024}, "pretrain": {"epochs": 20}},
              "data": {"source": "synthetic.csv", "sha256": sha256, "interactions": 1000, "users": 10,
                       "items": 20},
              "periods": [{"period": p, "role": r, "label": l, "interactions": n} for p, r, l, n in periods],
              "wall_seconds": 12.5}
    (out / "config.json").write_text(json.dumps(config))
    return out


def two_strategy_run(tmp_path: Path, name: str = "run-a") -> Path:
    return make_run(tmp_path, name, {"full-retrain": [0.3, 0.3, 0.5, 0.1],
                                     "fine-tune": [0.2, 0.2, 0.2, 0.4]},
                    seconds={"full-retrain": [2.0, 2.0, 4.0, 6.0], "fine-tune": [1.0, 1.0, 1.0, 2.0]})


def test_table1_numbers_equal_summary_csv(tmp_path):
    run = two_strategy_run(tmp_path)
    table = table1(load_runs([run]))
    summary = pd.read_csv(run / "summary.csv").set_index("strategy")
    for metric in METRIC_NAMES:
        np.testing.assert_allclose(table[metric].to_numpy(), summary.loc[table.index, metric].to_numpy())
    # micro-average by hand: full-retrain recall@20 = (100*0.5 + 300*0.1) / 400 = 0.2,
    # fine-tune = (100*0.2 + 300*0.4) / 400 = 0.35; validation periods are not counted.
    assert table.loc["full-retrain", "recall@20"] == pytest.approx(0.2)
    assert table.loc["fine-tune", "recall@20"] == pytest.approx(0.35)
    assert table.loc["fine-tune", "test_interactions"] == 400


def test_ri_arithmetic_on_a_hand_made_case():
    reference = pd.Series(dict(zip(METRIC_NAMES, [0.2, 0.3, 0.4, 0.1, 0.15, 0.2])))
    other = pd.Series(dict(zip(METRIC_NAMES, [0.1, 0.2, 0.4, 0.05, 0.1, 0.25])))
    # (0.2-0.1)/0.1 = 1, 0.5, 0, 1, 0.5, (0.2-0.25)/0.25 = -0.2  -> mean 2.8 / 6
    assert relative_improvement(reference, other) == pytest.approx(2.8 / 6)
    zero = other.copy()
    zero["recall@5"] = 0.0
    assert np.isnan(relative_improvement(reference, zero))


def test_table1_ri_column_and_reference(tmp_path):
    run = two_strategy_run(tmp_path)
    table = table1(load_runs([run]))
    # fine-tune wins every column (0.35 vs 0.2 scaled equally), so it is the reference, and its
    # RI over full-retrain is (0.35 - 0.2) / 0.2 = 0.75 on every metric.
    assert table.attrs["reference"] == "fine-tune"
    assert table.loc["full-retrain", "ri"] == pytest.approx(0.75)
    assert np.isnan(table.loc["fine-tune", "ri"])
    forced = table1(load_runs([run]), reference="full-retrain")
    assert forced.loc["fine-tune", "ri"] == pytest.approx((0.2 - 0.35) / 0.35)
    with pytest.raises(ConfigError, match="reference strategy 'sml' is not in the report"):
        table1(load_runs([run]), reference="sml")


def test_reference_is_the_strategy_best_on_most_columns():
    rows = {"a": [0.5, 0.5, 0.5, 0.1, 0.1, 0.1], "b": [0.4, 0.4, 0.4, 0.2, 0.2, 0.3],
            "c": [0.1] * 6}
    summary = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_NAMES))
    assert reference_strategy(summary) == "b"  # b wins 3 ndcg columns, a wins 3 recall columns; b closer overall


def test_bold_marks_the_best_of_each_column_and_ties(tmp_path):
    run = make_run(tmp_path, "run", {"x": [0, 0, 0.4, 0.4], "y": [0, 0, 0.4, 0.4], "z": [0, 0, 0.2, 0.2]})
    text = table1_text(table1(load_runs([run])))
    markdown = text.markdown()
    lines = markdown.splitlines()
    x_line = next(line for line in lines if line.startswith("| x "))
    y_line = next(line for line in lines if line.startswith("| y "))
    z_line = next(line for line in lines if line.startswith("| z "))
    assert "**0.4000**" in x_line and "**0.4000**" in y_line  # recall@20 ties: both bold
    assert "**" not in z_line
    assert x_line.count("**") == 2 * len(METRIC_NAMES)


def test_latex_escapes_and_bold(tmp_path):
    assert latex_escape("sml_v2 & 50% #1 {a}") == r"sml\_v2 \& 50\% \#1 \{a\}"
    assert latex_escape("a\\b~c^d$") == r"a\textbackslash{}b\textasciitilde{}c\textasciicircum{}d\$"
    run = make_run(tmp_path, "run", {"sml_v2 & co": [0, 0, 0.4, 0.4], "fine-tune": [0, 0, 0.2, 0.2]})
    latex = table1_text(table1(load_runs([run]))).latex()
    assert latex.startswith("\\begin{tabular}{lrrrrrrr}")
    assert r"sml\_v2 \& co & \textbf{0.1000}" in latex
    assert r"+100.0\%" in latex  # RI of sml_v2 & co over fine-tune: (0.4 - 0.2) / 0.2
    assert latex.count(" & ---") == 1  # the reference's own RI cell: an em dash, spelled for LaTeX
    assert "—" not in latex
    assert latex.rstrip().endswith("\\end{tabular}")


def test_markdown_and_html_escape_cells():
    table = TextTable(["Strategy", "x"], [["a|b <c>", "1"]], bold={(0, 1)})
    assert "a\\|b <c> | **1**" in table.markdown()
    assert "a|b &lt;c&gt;" in table.html() and "<b>1</b>" in table.html()


def test_cost_table_mean_and_ratio_to_fastest(tmp_path):
    table = cost_table(load_runs([two_strategy_run(tmp_path)]))
    assert list(table.columns) == ["period 15", "period 16", "mean", "ratio_to_fastest"]
    assert table.loc["full-retrain", "mean"] == pytest.approx(5.0)   # (4 + 6) / 2, test periods only
    assert table.loc["fine-tune", "mean"] == pytest.approx(1.5)
    assert table.loc["full-retrain", "ratio_to_fastest"] == pytest.approx(5.0 / 1.5)
    assert table.loc["fine-tune", "ratio_to_fastest"] == pytest.approx(1.0)
    summary = pd.read_csv(tmp_path / "run-a" / "summary.csv").set_index("strategy")
    np.testing.assert_allclose(table["mean"], summary.loc[table.index, "update_seconds"])


def test_breakdown_micro_averages_over_test_periods(tmp_path):
    groups = breakdown_table(load_runs([two_strategy_run(tmp_path)])).set_index(
        ["strategy", "user_group", "item_group"])
    old = groups.loc[("full-retrain", "old", "old")]
    # 75 rows at 0.5 (period 15) and 225 at 0.1 (period 16): (37.5 + 22.5) / 300 = 0.2
    assert old["interactions"] == 300 and old["share"] == pytest.approx(0.75)
    assert old["recall@20"] == pytest.approx(0.2)
    new = groups.loc[("full-retrain", "new", "new")]
    assert new["recall@20"] == pytest.approx(0.1) and new["interactions"] == 100
    empty = groups.loc[("full-retrain", "old", "new")]
    assert empty["interactions"] == 0 and np.isnan(empty["recall@20"])


def test_runs_with_the_same_periods_are_combined_and_duplicates_renamed(tmp_path):
    a = make_run(tmp_path, "run-a", {"full-retrain": [0, 0, 0.2, 0.2], "fine-tune": [0, 0, 0.3, 0.3]})
    b = make_run(tmp_path, "run-b", {"fine-tune": [0, 0, 0.1, 0.1], "sml": [0, 0, 0.5, 0.5]})
    combined = load_runs([a, b])
    assert combined.strategies == ["full-retrain", "fine-tune (run-a)", "fine-tune (run-b)", "sml"]
    table = table1(combined)
    assert table.loc["fine-tune (run-b)", "recall@20"] == pytest.approx(0.1)
    assert table.attrs["reference"] == "sml"


def test_runs_with_different_periods_or_roles_are_refused(tmp_path):
    a = make_run(tmp_path, "run-a", {"fine-tune": [0, 0, 0.2, 0.2]})
    shifted = [*PERIODS[:3], (16, "test", PERIODS[3][2], 299)]
    b = make_run(tmp_path, "run-b", {"sml": [0, 0, 0.5, 0.5]}, periods=shifted)
    with pytest.raises(ConfigError, match=r"cannot combine run-b .* the periods differ .*period 16 test "
                                          r".* with 299 interactions in run-b, period 16 test .* with "
                                          r"300 interactions in run-a"):
        load_runs([a, b])
    roles = [PERIODS[0], PERIODS[1], (15, "validation", PERIODS[2][2], 100), PERIODS[3]]
    c = make_run(tmp_path, "run-c", {"sml": [0, 0, 0.5, 0.5]}, periods=roles)
    with pytest.raises(ConfigError, match="period 15 validation"):
        load_runs([a, c])
    d = make_run(tmp_path, "run-d", {"sml": [0, 0, 0.5, 0.5]}, sha256="cd" * 32)
    with pytest.raises(ConfigError, match="different data"):
        load_runs([a, d])


def test_scored_periods_are_compared_even_without_config(tmp_path):
    a = make_run(tmp_path, "run-a", {"fine-tune": [0, 0, 0.2, 0.2]})
    b = make_run(tmp_path, "run-b", {"sml": [0, 0, 0.5]}, periods=PERIODS[:3])
    (a / "config.json").unlink()
    with pytest.raises(ConfigError, match="scored periods differ \\(run-a has 4 scored periods, run-b 3; "
                                          "first difference: period 16 test .* in run-a, absent in run-b"):
        combine_runs([load_run(b), load_run(a)])


def test_not_a_results_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a smlrec results directory \\(no periods.csv\\)"):
        load_run(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no such results directory"):
        load_run(tmp_path / "missing")


def test_write_report_writes_every_file(tmp_path):
    run = two_strategy_run(tmp_path)
    out = tmp_path / "report"
    report = write_report([run], out)
    for name in ("table1.md", "table1.csv", "table1.tex", "per_period.png", "table2_update_seconds.md",
                 "table2_update_seconds.csv", "breakdown.md", "breakdown.csv", "breakdown.png",
                 "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    for png in ("per_period.png", "breakdown.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    page = (out / "report.md").read_text()
    assert "ab" * 32 in page and "![" in page and "| **0.3500** |" in page
    html_page = (out / "report.html").read_text()
    assert html_page.count("data:image/png;base64,") == 3 and "<table>" in html_page  # + cost/accuracy
    csv = pd.read_csv(out / "table1.csv").set_index("strategy")
    assert csv.loc["full-retrain", "ri"] == pytest.approx(0.75)
    assert report.files == sorted(p.name for p in out.iterdir())
    assert not list(tmp_path.glob(".report.*"))  # the temporary directory was renamed


def test_write_report_refuses_non_empty_out_and_leaves_nothing_on_failure(tmp_path):
    run = two_strategy_run(tmp_path)
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        write_report([run], run)
    with pytest.raises(ConfigError, match="reference strategy"):
        write_report([run], tmp_path / "rep", reference="nope")
    assert not (tmp_path / "rep").exists() and not list(tmp_path.glob(".rep.*"))


def test_cli_report_combines_and_refuses_with_message(tmp_path, capsys):
    a = two_strategy_run(tmp_path, "run-a")
    b = make_run(tmp_path, "run-b", {"sml": [0, 0, 0.5, 0.5]})
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "both")]) == 0
    assert "sml" in (tmp_path / "both" / "table1.md").read_text()
    c = make_run(tmp_path, "run-c", {"sml": [0, 0, 0.5]}, periods=PERIODS[:3])
    assert main(["report", str(a), str(c), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "smlrec report: error: cannot combine run-c" in err and "periods differ" in err
    assert main(["report", str(a)]) == 0 and (a / "report" / "report.html").exists()


def tiny_log(path: Path, n_users: int = 30, n_items: int = 40, n_rows: int = 600) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user": rng.integers(0, n_users, n_rows), "item": rng.integers(0, n_items, n_rows),
                          "time": np.sort(rng.integers(1_600_000_000, 1_600_000_000 + 86400 * 30, n_rows))})
    frame.to_csv(path, index=False)
    return path


FAST = ["--periods", "6", "--plan", "2,1,1,2", "--pretrain-epochs", "1", "--no-progress", "--threads", "1",
        "--set", "mf.dim=8", "--set", "n_negatives=20",
        "--set", "strategy.full-retrain.epochs=1", "--set", "strategy.fine-tune.epochs=1"]


def test_replay_writes_its_report_unless_told_not_to(tmp_path):
    log = tiny_log(tmp_path / "log.csv")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "run"
    assert main(["replay", "--data", str(log), *FAST, *cache, "--out", str(out)]) == 0
    table = pd.read_csv(out / "report" / "table1.csv").set_index("strategy")
    summary = pd.read_csv(out / "summary.csv").set_index("strategy")
    np.testing.assert_allclose(table[list(METRIC_NAMES)], summary.loc[table.index, list(METRIC_NAMES)])
    page = (out / "report" / "report.md").read_text()
    assert f"### run\n" in page and f"- directory: {out}\n" in page  # not the temporary directory's
    assert ".tmp" not in page
    assert (out / "report" / "per_period.png").read_bytes().startswith(PNG_MAGIC)
    bare = tmp_path / "bare"
    assert main(["replay", "--data", str(log), *FAST, *cache, "--out", str(bare), "--no-report"]) == 0
    assert (bare / "summary.csv").exists() and not (bare / "report").exists()


def test_a_failing_report_keeps_the_replay_results(tmp_path, monkeypatch, capsys):
    import smlrec.report.document

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(smlrec.report.document, "build_report", broken)
    log = tiny_log(tmp_path / "log.csv")
    out = tmp_path / "run"
    assert main(["replay", "--data", str(log), *FAST, "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    assert (out / "summary.csv").exists() and not (out / "report").exists()
    assert "warning: the report was not written (RuntimeError: no fonts)" in capsys.readouterr().err


def protocol_run(tmp_path: Path, name: str = "multi") -> Path:
    """A two-protocol results directory (sampled, auc) with intervals and p-values, by hand."""
    out = make_run(tmp_path, name, {"a": [0.3, 0.3, 0.5, 0.1], "b": [0.2, 0.2, 0.2, 0.4],
                                    "pop": [0.1, 0.1, 0.1, 0.1]})
    periods = pd.read_csv(out / "periods.csv")
    periods["protocol"] = "sampled"
    auc = periods.copy()
    auc["protocol"] = "auc"
    auc[list(METRIC_NAMES)] = np.nan
    auc["auc"] = auc["strategy"].map({"a": 0.7, "b": 0.8, "pop": 0.75})
    auc["logloss"] = auc["strategy"].map({"a": 0.6, "b": 0.5, "pop": np.nan})
    periods = pd.concat([periods, auc], ignore_index=True)
    periods.to_csv(out / "periods.csv", index=False)
    summary = summary_frame(periods)
    summary["recall@20_lo"] = summary["recall@20"] - 0.01
    summary["recall@20_hi"] = summary["recall@20"] + 0.03
    summary.to_csv(out / "summary.csv", index=False)
    pd.DataFrame([{"protocol": "sampled", "metric": "recall@20", "best": "b", "strategy": "a",
                   "difference": 0.15, "p_value": 0.2},
                  {"protocol": "sampled", "metric": "recall@20", "best": "b", "strategy": "pop",
                   "difference": 0.25, "p_value": 0.001}]).to_csv(out / "significance.csv", index=False)
    return out


def test_one_table1_per_protocol_with_intervals_marks_and_order(tmp_path):
    out = tmp_path / "report"
    report = write_report([protocol_run(tmp_path)], out)
    assert set(report.tables1) == {"sampled", "auc"}
    sampled = report.tables1["sampled"]
    assert sampled.loc["b", "recall@20"] == pytest.approx(0.35)
    assert sampled.loc["b", "recall@20_lo"] == pytest.approx(0.34)
    lines = (out / "table1.md").read_text().splitlines()
    a_line = next(line for line in lines if line.startswith("| a "))
    pop_line = next(line for line in lines if line.startswith("| pop "))
    assert "0.2000 ± 0.0200 ≈" in a_line          # not significantly below b (p = 0.2)
    assert "0.1000 ± 0.0200 |" in pop_line and "≈" not in pop_line   # p = 0.001
    auc = (out / "table1_auc.md").read_text()
    assert "| AUC | LogLoss |" in auc and "**0.8000**" in auc and "**0.5000**" in auc  # lower LogLoss is better
    order = report.order
    assert list(order["sampled place"]) == [2, 1, 3] and list(order["auc place"]) == [3, 1, 2]
    assert order.attrs["kendall"][("sampled", "auc")] == pytest.approx(1 / 3)
    for name in ("protocol_order.md", "cost_accuracy_sampled.png", "cost_accuracy_auc.png"):
        assert (out / name).exists()
    assert (out / "cost_accuracy_auc.png").read_bytes().startswith(PNG_MAGIC)
    page = (out / "report.html").read_text()
    assert "protocol auc" in page and "Kendall" in page


def test_runs_written_before_protocols_are_read_as_sampled(tmp_path):
    run = two_strategy_run(tmp_path)
    for name in ("periods.csv", "summary.csv", "breakdown.csv"):
        frame = pd.read_csv(run / name)
        frame.drop(columns=[c for c in frame.columns if c in ("protocol", "auc", "logloss", "scoring_seconds")
                            or c.startswith(("auc_", "logloss_")) or c.endswith(("_lo", "_hi"))]).to_csv(
            run / name, index=False)
    assert "protocol" not in pd.read_csv(run / "periods.csv")
    combined = load_runs([run])
    assert combined.protocols == ["sampled"]
    report = write_report([run], tmp_path / "out")
    assert report.table1.loc["fine-tune", "recall@20"] == pytest.approx(0.35)
    assert report.order is None and "±" not in (tmp_path / "out" / "table1.md").read_text()
