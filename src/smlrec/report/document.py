"""Reports a researcher would publish, built from one or more replay results directories.

What :func:`write_report` writes into the report directory:

* ``table1.md`` / ``table1.csv`` / ``table1.tex``: the paper's Table 1 layout: one row per
  strategy, Recall and NDCG at 5/10/20 micro-averaged over the test periods (the numbers of
  ``summary.csv``) with ± the half-width of the 95% bootstrap interval, the best of each column in
  bold, ≈ on a value not significantly different (5%) from the column's best, and ``RI``: the
  relative improvement of the reference strategy over each other one, ``(ref - m) / m`` averaged
  over the six metric columns (sml-method.md section 5). Under the first ranking protocol
  (``sampled`` when scored); ``table1_<protocol>.*`` for each other protocol (AUC and LogLoss
  under ``auc``), and ``protocol_order.md`` / ``.csv``: each strategy's place under each protocol,
  ``protocol_top3.csv``: the three best strategies of each protocol side by side;
* ``cost_accuracy_<protocol>.png``: mean update seconds (log) against R@20 (AUC under ``auc``)
  with 95% intervals, one point per strategy;
* ``per_period.png``: Recall@20 and NDCG@20 per test period, one line per strategy;
* ``table2_update_seconds.md`` / ``.csv``: update seconds per test period and strategy with the
  mean and the ratio of each mean to the fastest one (the paper's Table 2);
* ``breakdown.md`` / ``breakdown.csv`` / ``breakdown.png``: metrics split by old/new user x
  old/new item, micro-averaged over the test periods;
* ``who_wins.csv`` / ``who_wins.md`` / ``who_wins.png`` (``who_wins_<protocol>.*`` for each
  other ranking protocol): test R@20 per user group (warm/cold, history-length buckets) with 95%
  intervals, the winner and the strategies tied with it (:mod:`.wins`), when the runs saved
  ``test_rows.csv.gz``;
* ``report.md``: one page tying these together with each run's settings and data hash, and
  ``report.html``: the same page with the images embedded, one self-contained file.

The tables are built in :mod:`.tables`, the figures in :mod:`.figures`, from runs read and
aligned by :mod:`.runs`; this module lays them out as one page and writes the directory.
"""

from __future__ import annotations

import base64
import html
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ..atomic import atomic_directory
from .figures import plot_breakdown, plot_cost_accuracy, plot_per_period
from .runs import Combined, Run, load_runs
from .tables import (BELOW_FLOOR, COLLAPSED_MARK, NOT_SIGNIFICANT, WARM_COLD_ORDER, TextTable, breakdown_table,
                     breakdown_text, cost_table, cost_text, key_metrics, metric_label, order_metric,
                     order_table, order_text, segment_table, segment_text, table1, table1_text, top_three_table,
                     top_three_text)
from .wins import TIED_MARK, WINNER_MARK, Log, winners_line, wins_text, write_wins

PROTOCOL_TEXT = {
    "sampled": "each test interaction's item ranked among 1 positive + 999 negatives sampled from "
               "the items seen so far minus the user's items (the paper's protocol)",
    "full": "each test interaction's item ranked among every item seen so far minus the user's "
            "items so far (full ranking)",
    "auc": "each test interaction's item and one negative sampled from the same pool, scored as a "
           "binary task: AUC (ties 1/2) and LogLoss of sigmoid(score), per period (as ASMG); LogLoss "
           "is empty for strategies whose scores are not logits (popularity counts, sequential "
           "models serving cold users by counts)",
}


# ----------------------------------------------------------------------------------------------
# (e) report.md / report.html

def tuned_fact(settings: dict) -> str:
    """What `smlrec tune` chose and how (``settings["tuned"]``), with any value the run overrode."""
    tuned = settings.get("tuned") or {}
    parts = []
    for name, record in (tuned.get("strategy") or {}).items():
        used = (settings.get("strategy") or {}).get(name, {})
        shown = []
        for key, value in (record.get("values") or {}).items():
            text = f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
            if key in used and used[key] != value:
                text += f" (overridden: {used[key]})"
            shown.append(text)
        parts.append(f"{name} {', '.join(shown)} ({record.get('trials', '?')} trials)")
    periods = ", ".join(str(p) for p in tuned.get("validation_periods", [])) or "?"
    return (f"{'; '.join(parts)}; by {tuned.get('by', '?')}, {tuned.get('sampler', '?')}, "
            f"validation {tuned.get('metric', '?')} on periods {periods}")


def _run_facts(run: Run) -> list[tuple[str, str]]:
    config = run.config
    settings = config.get("settings", {})
    data = config.get("data", {})
    plan = settings.get("plan", {})
    mf = settings.get("mf", {})
    facts = [("directory", run.shown_path),
             ("data", f"{data.get('source', '?')} ({data.get('interactions', '?')} interactions, "
                      f"{data.get('users', '?')} users, {data.get('items', '?')} items)"),
             ("data sha256", str(data.get("sha256", "?"))),
             ("periods", f"{len(config.get('periods', [])) or '?'}; plan pretrain/offline/"
                         f"validation/test = {plan.get('pretrain', '?')}/{plan.get('offline', '?')}/"
                         f"{plan.get('validation', '?')}/{plan.get('test', '?')}"),
             ("strategies", ", ".join(config.get("strategies", run.strategies))),
             ("seed", str(settings.get("seed", "?"))),
             ("MF", f"dim {mf.get('dim', '?')}, lr {mf.get('lr', '?')}, batch {mf.get('batch_size', '?')}"
                    f", pretrain epochs {settings.get('pretrain', {}).get('epochs', '?')}")]
    if settings.get("strategy"):
        facts.append(("strategy settings", json.dumps(settings["strategy"], sort_keys=True)))
    if settings.get("tuned"):
        facts.append(("tuned settings", tuned_fact(settings)))
    if "wall_seconds" in config:
        facts.append(("wall time", f"{config['wall_seconds']:.1f} s on {settings.get('device', '?')}"))
    facts.append(("smlrec version", str(config.get("smlrec_version", "?"))))
    return facts


@dataclass
class _Page:
    """A report page as blocks, rendered to Markdown and HTML from the same content."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, table: TextTable) -> None:
        self.blocks.append(("table", table))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("image", (path, alt)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "heading":
                out.append("#" * value[0] + " " + value[1] + "\n")
            elif kind == "text":
                out.append(value + "\n")
            elif kind == "table":
                out.append(value.markdown())
            elif kind == "image":
                out.append(f"![{value[1]}]({value[0].name})\n")
            elif kind == "code":
                out.append("```\n" + value.rstrip() + "\n```\n")
        return "\n".join(out)

    def html(self, title: str) -> str:
        out = [f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
               "color:#222}table{border-collapse:collapse;margin:0.5em 0 1em}th,td{border:1px solid "
               "#ccc;padding:3px 8px}th{background:#f3f3f3}td.num,th.num{text-align:right;"
               "font-variant-numeric:tabular-nums}img{max-width:100%}pre{background:#f6f6f6;"
               "padding:0.6em;overflow-x:auto}code{background:#f6f6f6}</style></head><body>"]
        for kind, value in self.blocks:
            if kind == "heading":
                out.append(f"<h{value[0]}>{html.escape(value[1])}</h{value[0]}>")
            elif kind == "text":
                out.append(f"<p>{_inline_html(value)}</p>")
            elif kind == "table":
                out.append(value.html())
            elif kind == "image":
                data = base64.b64encode(value[0].read_bytes()).decode("ascii")
                out.append(f'<p><img alt="{html.escape(value[1])}" src="data:image/png;base64,{data}"></p>')
            elif kind == "code":
                out.append(f"<pre>{html.escape(value)}</pre>")
        out.append("</body></html>\n")
        return "\n".join(out)


def _inline_html(text: str) -> str:
    """Escape, then render the two inline marks this page uses: `code` and - list items."""
    escaped = html.escape(text)
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    lines = escaped.split("\n")
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{line[2:]}</li>" for line in lines) + "</ul>"
    return "<br>".join(lines)


@dataclass
class Report:
    """What :func:`build_report` computed (the numbers behind every file)."""

    combined: Combined
    table1: pd.DataFrame
    costs: pd.DataFrame
    breakdown: pd.DataFrame
    files: list[str]
    tables1: dict[str, pd.DataFrame] = field(default_factory=dict)   # protocol -> Table 1
    order: pd.DataFrame | None = None                                # places under each protocol
    top_three: pd.DataFrame | None = None                            # best three per protocol
    wins: pd.DataFrame | None = None                                 # who wins where (user groups)


def build_report(combined: Combined, out: Path, reference: str | None = None) -> Report:
    """Write every report file into the existing directory ``out`` (see the module docstring)."""
    out = Path(out)
    protocols = combined.protocols or ["sampled"]
    # Every table but Table 1 is drawn under one protocol: the first ranking one scored.
    primary = next((p for p in protocols if p != "auc"), protocols[0])
    everything, combined = combined, combined.for_protocol(primary)
    keys = key_metrics(primary)
    tables1 = {p: table1(everything.for_protocol(p), reference) for p in protocols}
    t1 = tables1[primary]
    t1_texts = {p: table1_text(t) for p, t in tables1.items()}
    for protocol, table in tables1.items():
        stem = "table1" if protocol == primary else f"table1_{protocol}"
        table.to_csv(out / f"{stem}.csv", index_label="strategy")
        (out / f"{stem}.md").write_text(t1_texts[protocol].markdown())
        (out / f"{stem}.tex").write_text(t1_texts[protocol].latex())
    order = order_table(everything) if len(protocols) > 1 else None
    top = top_three_table(order) if order is not None else None
    if order is not None:
        order.to_csv(out / "protocol_order.csv")
        top.to_csv(out / "protocol_top3.csv")
        (out / "protocol_order.md").write_text(order_text(order).markdown() + "\nTop three per protocol:\n\n"
                                               + top_three_text(top).markdown())

    segments = segment_table(combined, keys)
    segments_text = segment_text(segments, keys)
    segments.to_csv(out / "table1_warm_cold.csv")
    (out / "table1_warm_cold.md").write_text(segments_text.markdown())

    plot_per_period(combined.periods, combined.strategies, out / "per_period.png", keys)

    costs = cost_table(combined)
    costs_text = cost_text(costs)
    costs.to_csv(out / "table2_update_seconds.csv")
    (out / "table2_update_seconds.md").write_text(costs_text.markdown())
    for protocol, table in tables1.items():
        metric = order_metric(protocol)
        plot_cost_accuracy(table, costs["mean"], metric, out / f"cost_accuracy_{protocol}.png",
                           f"Cost and accuracy, protocol {protocol}: {metric_label(metric)}")

    groups = breakdown_table(combined, metrics=keys)
    groups.to_csv(out / "breakdown.csv", index=False)
    group_texts = {m: breakdown_text(groups, m) for m in keys}
    (out / "breakdown.md").write_text("\n".join(f"{metric_label(m)}\n\n{t.markdown()}"
                                                for m, t in group_texts.items()))
    plot_breakdown(groups, out / "breakdown.png", keys)
    warm_cold_texts = {}
    if not combined.warm_cold.empty:
        warm_cold = breakdown_table(combined, WARM_COLD_ORDER, metrics=keys)
        warm_cold.to_csv(out / "breakdown_warm_cold.csv", index=False)
        warm_cold_texts = {m: breakdown_text(warm_cold, m, WARM_COLD_ORDER) for m in keys}

    log = Log(Path(str(combined.runs[0].config.get("data", {}).get("source", "") or "log")).name, everything)
    wins, wins_figures = write_wins([log], out) if everything.rows is not None else (None, {})

    title = "smlrec replay report: " + ", ".join(run.name for run in combined.runs)
    page = _Page()
    page.heading(title, 1)
    scored = combined.scored_periods
    test = scored[scored["role"] == "test"]
    page.text(f"{len(combined.strategies)} strategies, {len(test)} test periods "
              f"({int(test['interactions'].sum())} test interactions); metrics are micro-averaged "
              "over the test periods (weighted by interactions). Protocols scored:\n"
              + "\n".join(f"- {p}: {PROTOCOL_TEXT.get(p, p)}" for p in protocols))
    for protocol, text in t1_texts.items():
        table = tables1[protocol]
        stem = "table1" if protocol == primary else f"table1_{protocol}"
        page.heading(f"Table 1: accuracy over the test periods, protocol {protocol}")
        intervals = any(table[f"{m}_lo"].notna().any() for m in table.attrs["metrics"])
        page.text("Best of each column in bold"
                  + ("; ± half-width of the 95% bootstrap interval (test interactions resampled by "
                     f"user, seeded); {NOT_SIGNIFICANT} = not significantly different from the "
                     "column's best at 5% (paired bootstrap on the same resamples)" if intervals else "")
                  + f". RI = relative improvement of {table.attrs['reference']} (the strategy best on "
                    "most columns) over each row, (ref - m) / m averaged over the columns where "
                    f"higher is better. Also as `{stem}.csv` and `{stem}.tex`."
                  + (f" {COLLAPSED_MARK} collapsed in k = in k test periods most rows scored every "
                     "candidate the same (a broken model: ties rank the positive last)"
                     if table["collapsed_periods"].gt(0).any() else ""))
        page.table(text)
    if order is not None:
        page.heading("Does the order survive a change of protocol?")
        taus = "; ".join(f"{a} vs {b}: {tau:+.2f}" for (a, b), tau in order.attrs["kendall"].items())
        page.text("Each strategy's place (1 = best) by R@20 under sampled and full ranking and by "
                  f"AUC under auc. Kendall's tau between the orders (1 = same order): {taus}. "
                  "Also as `protocol_order.csv`.")
        page.table(order_text(order))
        page.text("The top three under each protocol, side by side (`protocol_top3.csv`):")
        page.table(top_three_text(top))
    page.heading("Cost against accuracy")
    page.text("Mean update seconds per test period (log scale) against the protocol's main metric, "
              "with its 95% interval; one point per strategy.")
    for protocol in tables1:
        page.image(out / f"cost_accuracy_{protocol}.png", f"update seconds against accuracy, {protocol}")
    if len(protocols) > 1:
        page.text(f"The tables and figures below are under the {primary} protocol.")
    page.heading("Warm and cold users, against the popularity floor")
    page.text("A user is warm in a period when it had an interaction in an earlier period, cold "
              "otherwise (the model has never trained on it and serves its cold-start rule). "
              f"{BELOW_FLOOR} marks a value below the popularity floor (the better of pop and "
              "pop-recent in that column): that strategy loses to a popularity count there. "
              "Also as `table1_warm_cold.csv`.")
    page.table(segments_text)
    if wins is not None and not wins.empty:
        page.heading("Who wins where: user groups")
        page.text(f"Test Recall@20 per user group with its 95% bootstrap interval (the group's users "
                  "resampled, as for Table 1), from each test row's saved rank (`test_rows.csv.gz`). "
                  "Groups: warm / cold users, and the user's history length at the row (the user's "
                  "rows strictly before it, earlier periods and earlier rows of the same period): "
                  f"buckets 0, 1-4, 5-19, 20+. {WINNER_MARK} and bold = the group's best; "
                  f"{TIED_MARK} = its interval overlaps the best's (not shown apart). Also as "
                  "`who_wins.csv`.")
        for protocol, figure in wins_figures.items():
            page.text(f"Protocol {protocol}: " + winners_line(wins, log.name, protocol))
            page.table(wins_text(wins, log.name, protocol))
            page.image(figure, f"Recall@20 per user group, protocol {protocol}")
    elif combined.rows is None:
        page.heading("Who wins where: user groups")
        page.text("Not available: these runs were written before the replay saved its per-row "
                  "results (`test_rows.csv.gz`); replay again to get them.")
    page.heading("Per test period")
    page.image(out / "per_period.png", f"{metric_label(keys[0])} and {metric_label(keys[1])} per test period")
    page.heading("Table 2: update cost")
    page.text("Seconds of the update whose model is scored on each test period (the update on the "
              "period before it); the fastest mean in bold; × fastest = mean / fastest mean.")
    page.table(costs_text)
    page.heading("Where the accuracy comes from: old/new users and items")
    page.text("\"new\" = first seen in a test period. Metrics micro-averaged over the test periods "
              "inside each group; n = test interactions of the group (share of all).")
    for metric, text in group_texts.items():
        page.text(metric_label(metric))
        page.table(text)
    page.image(out / "breakdown.png", f"{metric_label(keys[0])} and {metric_label(keys[1])} by old/new user and item")
    if warm_cold_texts:
        page.text("The same split by warm/cold (an interaction in an earlier period or not), for "
                  "users and items (`breakdown_warm_cold.csv`):")
    for metric, text in warm_cold_texts.items():
        page.text(metric_label(metric))
        page.table(text)
    page.heading("Periods scored")
    page.table(TextTable(["Period", "Role", "Dates", "Interactions"],
                         [[str(r.period), r.role, r.label, str(r.interactions)]
                          for r in scored.itertuples(index=False)], align="rllr"))
    page.heading("Runs")
    for run in combined.runs:
        page.heading(run.name, 3)
        page.text("\n".join(f"- {key}: {value}" for key, value in _run_facts(run)))
        if combined.origin and len(combined.runs) > 1:
            page.text("strategies shown from this run: "
                      + ", ".join(s for s, r in combined.origin.items() if r == run.name))
    page.heading("Settings")
    for run in combined.runs:
        page.text(f"{run.name} (`config.json` settings):")
        page.code(json.dumps(run.config.get("settings", {}), indent=1, sort_keys=True))
    (out / "report.md").write_text(page.markdown())
    (out / "report.html").write_text(page.html(title))
    files = sorted(p.name for p in out.iterdir())
    return Report(everything, t1, costs, groups, files, tables1, order, top, wins)


def write_report(run_dirs: Sequence[str | Path], out: str | Path, reference: str | None = None,
                 names: Sequence[str | None] | None = None,
                 shown_paths: Sequence[str | Path | None] | None = None) -> Report:
    """Read and align ``run_dirs``, and write the report directory ``out`` atomically.

    ``out`` must not exist or be empty; it is built under a temporary name beside it and renamed
    into place when complete, so a failed report leaves nothing behind.
    """
    combined = load_runs(run_dirs, names, shown_paths)
    with atomic_directory(out) as tmp:
        report = build_report(combined, tmp, reference)
    return report


def replay_report_writer(run_dir: Path) -> Callable[[Path], None]:
    """The writer ``smlrec replay`` hands to write_results: builds ``<run>/report`` from the run.

    A failure to draw the report must not throw away the replay it describes, so it is reported
    as a warning and the results directory is still completed.
    """

    def write(path: Path) -> None:
        try:
            write_report([path.parent], path, names=[run_dir.name], shown_paths=[run_dir])
        except Exception as err:  # noqa: BLE001 - the results matter more than their report
            print(f"warning: the report was not written ({type(err).__name__}: {err}); the results "
                  f"are kept: run `smlrec report {run_dir}` after fixing the cause", file=sys.stderr)

    return write
