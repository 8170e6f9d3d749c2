"""Docs that cannot rot: the commands and Python of README.md and docs/*.md are checked and run.

* Every ```python block of every page compiles; every ```sh / ```bash block of every page: each ``smlrec ...`` command (also ``python -m
  smlrec`` and ``torchrun ... -m smlrec``) is parsed by smlrec's own argument parser, and each
  ``torchrun`` launch by torchrun's, so a renamed command or flag fails here. ``make X`` must be a
  target of the Makefile; it is not run (``make demo`` takes minutes, ``make test`` is this suite).
* Every page but those in PARSED_ONLY (so a new page is run) is also executed, block by block in
  page order, in one folder of small fixture files per page (``clicks.csv``, ``history.csv``, ``2024-05-02.csv``, a synthetic
  ``ratings.csv`` standing in for the bundled data): each smlrec command with FAST settings
  appended (1 pretraining epoch, 8 dimensions, 49 negatives, 20 bootstrap resamples, the contract
  suite's fast strategy settings), each ```python block with ``smlrec.replay`` given the same.
  Not run, only parsed: ``smlrec serve`` (it serves until stopped) and ``torchrun`` launches
  (tests/test_scaling_docs.py runs the multi-node one on two local ranks).
* The pages in PARSED_ONLY are parsed only, for the reason given there.
* A block that is not a command (output, a table, TOML, cron) takes another fence: ```text.
  Every block names its language: a bare ``` fails here, so no command escapes the checks.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import smlrec.api
from smlrec.cli import build_parser, main
from smlrec.testing import FAST_OVERRIDES, random_rows

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", REPO / "examples" / "README.md", *(REPO / "docs").glob("*.md")])
PARSED_ONLY = {
    "docs/production.md": "a daily loop on /srv paths, a server and curl; its commands are the "
                          "README's production block, which runs here",
    "docs/datasets.md": "the paper's raw Yelp and Adressa files (gigabytes, downloaded by hand)",
    "docs/tuning.md": "shared storages of several machines (PostgreSQL, an NFS journal) and budgets of "
                      "hundreds of trials; tests/test_tune.py runs tune, --jobs and --storage on small logs",
}


def name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


RUN = {name(page) for page in PAGES} - set(PARSED_ONLY)   # a new page is run unless listed above
SHELL = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)

FAST_SMLREC = ["--pretrain-epochs", "1", "--set", "mf.dim=8", "--set", "n_negatives=49", "--threads", "1"]


def _set_flags(prefix: str, settings: dict) -> list[str]:
    """``--set prefix.key=value`` flags; a nested table (a wrapper's ``inner_settings``) key by key."""
    return [flag for key, value in settings.items()
            for flag in (_set_flags(f"{prefix}.{key}", value) if isinstance(value, dict)
                         else ("--set", f"{prefix}.{key}={value}"))]


FAST_STRATEGIES = [flag for name, settings in FAST_OVERRIDES.items()
                   for flag in _set_flags(f"strategy.{name}", settings)]


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, text, line) of every fenced block."""
    text = page.read_text()
    return [(m.group(1).lower(), m.group(2), text[:m.start()].count("\n") + 1) for m in FENCE.finditer(text)]


def commands(text: str) -> list[list[str]]:
    """The command lines of a shell block as argv lists (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", text)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def smlrec_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``smlrec`` (or ``python -m smlrec``, ``torchrun ... -m smlrec``)."""
    if argv[0] == "smlrec":
        return argv[1:]
    if "-m" in argv and argv.index("-m") + 1 < len(argv) and argv[argv.index("-m") + 1] == "smlrec":
        return argv[argv.index("-m") + 2:]
    return None


def parse(argv: list[str], where: str) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit_:
        if exit_.code:
            pytest.fail(f"{where}: `smlrec {' '.join(argv)}` does not parse")


def makefile_targets() -> set[str]:
    return set(re.findall(r"(?m)^([\w-]+):", (REPO / "Makefile").read_text()))


def shell_blocks(page: Path) -> list[tuple[str, int]]:
    return [(text, line) for lang, text, line in blocks(page) if lang in SHELL]


# ----------------------------------------------------------------------------------------------
# Every page: commands parse

@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_command_parses(page):
    checked = 0
    for lang, text, line in blocks(page):
        if lang == "python":      # pages that are not run still hold valid Python
            compile(text, f"{name(page)}:{line}", "exec")
    for text, line in shell_blocks(page):
        for argv in commands(text):
            where = f"{name(page)}:{line}"
            if argv[0] == "make":
                assert set(argv[1:2]) <= makefile_targets(), f"{where}: no Makefile target {argv[1]}"
            elif argv[0] == "torchrun":
                from torch.distributed.run import get_args_parser

                launcher = argv[1:argv.index("-m")]
                try:
                    get_args_parser().parse_args([*launcher, "-m", "smlrec"])
                except SystemExit:
                    pytest.fail(f"{where}: torchrun does not accept {' '.join(launcher)}")
            if (args := smlrec_argv(argv)) is not None:
                parse(args, where)
                checked += 1
    if name(page) == "README.md":
        assert checked >= 5


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_block_names_its_language(page):
    bare = [line for lang, _, line in blocks(page) if not lang]
    assert bare == [], f"{page.name}: blocks at lines {bare} have no language (```sh, ```python, ```text, ...)"


def test_the_parse_check_catches_a_renamed_flag():
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        parse(["replay", "--strategy", "sml"], "here")          # the flag is --strategies
    assert commands("smlrec replay --data a.csv \\\n   --out b   # comment\n\n") == [
        ["smlrec", "replay", "--data", "a.csv", "--out", "b"]]


def test_the_readme_is_short_and_its_figure_exists():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme)
    assert figures and all((REPO / f).is_file() for f in figures)
    assert "make demo" in readme and "make test" in readme


def test_every_readme_link_to_docs_is_a_page_or_announced():
    """Links from the README land on a page; baselines.md and tuning.md come from other branches
    (the docs build drops them from the nav until they exist: docs/hooks/optional_pages.py)."""
    readme = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs/|examples/)[^)#]+)", readme):
        if target in ("docs/baselines.md", "docs/tuning.md"):
            continue
        assert (REPO / target).exists(), target


# ----------------------------------------------------------------------------------------------
# Pages in RUN: blocks executed on small data

def write_fixtures(folder: Path) -> None:
    users, items, times = random_rows(n_rows=1500, n_users=60, n_items=80, seed=11)
    pd.DataFrame({"userId": users, "movieId": items, "rating": 4.0, "timestamp": times}).to_csv(
        folder / "ratings.csv", index=False)
    rng = np.random.default_rng(5)
    day = 86_400

    def daily(days: int, per_day: int, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        time = np.repeat(start + np.arange(days) * day, per_day) + rng.integers(0, day, days * per_day)
        return (rng.integers(0, 40, len(time)), np.minimum(rng.geometric(0.05, len(time)), 60), np.sort(time))

    u, i, t = daily(31, 30, 1_700_000_000 - 1_700_000_000 % day)   # 31 whole days: --every 1D, 7+14+3+7
    pd.DataFrame({"uid": u, "article": i, "ts": t}).to_csv(folder / "clicks.csv", index=False)
    may = 1_711_929_600                                              # 2024-04-01 00:00 UTC
    u, i, t = daily(31, 30, may)                                     # 31 days: --plan 10,20,0,1
    pd.DataFrame({"user": u + 30, "item": i, "time": t}).to_csv(folder / "history.csv", index=False)
    u, i, t = daily(1, 30, may + 31 * day)                           # 2024-05-02
    pd.DataFrame({"user": u + 30, "item": i, "time": t}).to_csv(folder / "2024-05-02.csv", index=False)


def fast_argv(args: list[str], folder: Path) -> list[str]:
    command = args[0]
    if command in ("replay", "sweep"):
        bundled = "--data" not in args and "--preset" not in args
        return [*args, *(["--data", str(folder / "ratings.csv")] if bundled else []), *FAST_SMLREC,
                *FAST_STRATEGIES, "--bootstrap", "20", "--no-progress",
                *(["--no-report"] if command == "replay" else [])]
    if command == "init":
        return [*args, *FAST_SMLREC, *FAST_STRATEGIES]
    return args


def fast_replay(original):
    def replay(log=None, **kwargs):
        kwargs.update(pretrain={"epochs": 1}, n_negatives=49, threads=1, progress=False,
                      bootstrap_resamples=min(kwargs.get("bootstrap_resamples", 20), 20),
                      mf={**kwargs.get("mf", {}), "dim": 8},
                      strategy={**{k: dict(v) for k, v in FAST_OVERRIDES.items()}, **kwargs.get("strategy", {})})
        return original(fast_replay.folder / "ratings.csv" if log is None else log, **kwargs)

    return replay


@pytest.mark.parametrize("page", sorted(p for p in PAGES if name(p) in RUN), ids=name)
def test_the_blocks_run(page, tmp_path, monkeypatch, capsys):
    write_fixtures(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))                 # examples.* as from the repository root
    fast_replay.folder = tmp_path
    monkeypatch.setattr(smlrec.api, "replay", fast_replay(smlrec.api.replay))
    from smlrec.strategies import STRATEGIES

    registered = dict(STRATEGIES)
    try:
        for lang, text, line in blocks(page):
            where = f"{name(page)}:{line}"
            if lang in SHELL:
                for argv in commands(text):
                    args = smlrec_argv(argv)
                    if args is None or argv[0] == "torchrun" or args[0] == "serve":
                        continue
                    status = main(fast_argv(args, tmp_path))
                    assert status == 0, f"{where}: `{' '.join(argv)}` exited {status}: {capsys.readouterr().err[-2000:]}"
            elif lang == "python":
                try:
                    exec(compile(text, where, "exec"), {"__name__": "__docs__"})
                except Exception as err:  # noqa: BLE001 - name the block that failed
                    pytest.fail(f"{where}: the Python block raised {type(err).__name__}: {err}")
    finally:
        STRATEGIES.clear()
        STRATEGIES.update(registered)
        sys.modules.pop("__docs__", None)
