"""Production safety (issue 25, D1 and D8-D12): exact ids, absurd times, refusals that touch no
byte, no write through a symbolic link, one rule for committed versions, duplicate rows, private
file modes.

Refusals are checked as an operator meets them: exit status 2, a message naming the file and the
problem, and no byte, mtime or file of the registry changed (the lock file included).
"""

import json
import logging
import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _production_data import DAY, T0, synthetic_log, tiny_settings, write_periods
from smlrec.cli import main
from smlrec.data.log import (ID_INEXACT, ID_NOT_NUMBER, ID_NOT_WHOLE, ID_OK, ID_TOO_LARGE, ReadOptions,
                             parse_whole_numbers, read_log)
from smlrec.errors import CheckpointError, DataError
from smlrec.ids import whole_number
from smlrec.production import init_registry, update_once
from smlrec.production.ingest import as_numbers
from smlrec.production.served import NUMBER, normalise_query
from smlrec.production.registry import ModelRegistry

HISTORY = 4
BIG = 9007199254740993            # 2^53 + 1: float64 rounds it to 2^53


@pytest.fixture(autouse=True)
def no_stale_log_handler():
    """Drop a handler an earlier test's `main(... --log-json)` left on pytest's closed stderr (it
    would print "--- Logging error ---" into this test's stderr)."""
    logger = logging.getLogger("smlrec")
    for handler in [h for h in logger.handlers if getattr(h, "_smlrec_cli_handler", False)]:
        logger.removeHandler(handler)
    yield


@pytest.fixture(scope="module")
def initialised(tmp_path_factory):
    """A fine-tune registry at version 1 (number ids from a generic CSV) and the next two periods."""
    root = tmp_path_factory.mktemp("safety")
    history, batches = write_periods(synthetic_log(6), root / "data", HISTORY)
    umask = os.umask(0o022)                      # the usual umask: modes below are smlrec's choice
    try:
        init_registry(history, root / "reg", "fine-tune", tiny_settings("fine-tune", HISTORY))
    finally:
        os.umask(umask)
    return root / "reg", batches


@pytest.fixture()
def reg(initialised, tmp_path):
    source, batches = initialised
    shutil.copytree(source, tmp_path / "reg", symlinks=True)
    return tmp_path / "reg", batches


def state(root: Path) -> dict[str, tuple]:
    """Every entry of the registry folder (the lock file included): bytes, mtime and mode."""
    found = {".": (None, root.stat().st_mtime_ns, root.stat().st_mode)}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        found[str(path.relative_to(root))] = (data, info.st_mtime_ns, info.st_mode)
    return found


def refused(capsys, root: Path, batch: Path, *flags: str, named: Path | None = None) -> str:
    """`smlrec update` refusing: exit 2, no warning, nothing in the registry touched; returns stderr."""
    before = state(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no numpy RuntimeWarning on the way to the refusal
        assert main(["update", "--registry", str(root), "--data", str(batch), *flags]) == 2
    assert state(root) == before
    err = capsys.readouterr().err
    assert str(named or batch) in err and "Traceback" not in err
    return err


def write_batch(path: Path, rows: list[tuple]) -> Path:
    path.write_text("user,item,time\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return path


# -- D1: ids of 2^53 or more never go through float64 -----------------------------------------------

def test_number_ids_are_parsed_exactly_and_ids_beyond_int64_are_refused(tmp_path):
    exact = tmp_path / "ratings.csv"              # MovieLens: number ids
    exact.write_text(f"userId,movieId,rating,timestamp\n{BIG},{BIG},4,{T0}\n{BIG - 1},7,4,{T0 + 1}\n"
                     f"9223372036854775807,8,4,{T0 + 2}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log = read_log(exact)
    assert log.user_ids.dtype == np.int64
    assert log.user_ids.tolist() == [BIG, BIG - 1, 2**63 - 1] and log.item_ids.tolist() == [BIG, 7, 8]
    for value in ("99999999999999999999", "88888888888888888888", "-9223372036854775808"):
        big = tmp_path / f"{value[:3]}" / "ratings.csv"
        big.parent.mkdir()
        big.write_text(f"userId,movieId,rating,timestamp\n1,2,4,{T0}\n{value},3,4,{T0 + 1}\n")
        with pytest.raises(DataError) as caught, warnings.catch_warnings():
            warnings.simplefilter("error")
            read_log(big)
        assert str(caught.value).startswith(f"{big}, line 3, column 'userId': id '{value}' does not fit "
                                            "a 64-bit integer")


def test_parquet_integer_and_float_ids_are_exact_or_refused(tmp_path):
    numbers = ReadOptions(numeric_user_ids=True, numeric_item_ids=True)
    path = tmp_path / "ids.parquet"
    pd.DataFrame({"user": np.array([BIG, BIG - 1], np.int64), "item": [1, 2], "time": [T0, T0 + 1]}).to_parquet(path)
    assert read_log(path, numbers).user_ids.tolist() == [BIG, BIG - 1]           # two users, exact
    floats = tmp_path / "floats.parquet"
    pd.DataFrame({"user": [1.0, 2.0**60], "item": [1, 2], "time": [T0, T0 + 1]}).to_parquet(floats)
    with pytest.raises(DataError, match=r"line 2, column 'user': id 1.15\d+e\+18 is a floating-point number "
                                        r"of 2\^53 or more"):
        read_log(floats, numbers)


def test_the_scalar_id_rule_is_the_vectorised_one():
    spellings = [str(BIG), "99999999999999999999", " 12 ", "339.0", "339.00", "1e3", "1E3", "339.5", "abc", "inf",
                 "nan", "-7", "+5", "-0", "0012", "1_000", "\u0661\u0662", "9223372036854775807",
                 "9223372036854775808", "-9223372036854775807", "1e20", "", "1.5e3", "0x10", "12abc"]
    values, codes = parse_whole_numbers(pd.Series(spellings, dtype=object))
    twin = [whole_number(text) for text in spellings]
    assert twin == [int(v) if c == ID_OK else None for v, c in zip(values, codes)]
    by_text = dict(zip(spellings, codes.tolist()))
    assert (by_text["99999999999999999999"], by_text["1e20"], by_text["339.5"], by_text["abc"]) == \
        (ID_TOO_LARGE, ID_INEXACT, ID_NOT_WHOLE, ID_NOT_NUMBER)
    assert values[0] == BIG and values[spellings.index("1e3")] == 1000


def test_history_ids_become_exact_numbers_and_queries_find_them():
    assert as_numbers(np.array([str(BIG), str(BIG - 1)], dtype=object)).tolist() == [BIG, BIG - 1]
    assert as_numbers(np.array(["99999999999999999999", "1"], dtype=object)).dtype == object   # stays text
    assert normalise_query(f" {BIG} ", NUMBER) == BIG and normalise_query("99999999999999999999", NUMBER) is None


def test_a_batch_keeps_ids_of_2_53_apart_and_refuses_ids_beyond_int64(reg, tmp_path, capsys):
    root, _ = reg
    before = ModelRegistry(root).load()
    assert before.user_ids.dtype == np.int64
    merged = write_batch(tmp_path / "huge.csv", [(1000, 5000, T0 + 9 * DAY),
                                                 ("99999999999999999999", 5001, T0 + 9 * DAY + 1),
                                                 ("88888888888888888888", 5002, T0 + 9 * DAY + 2)])
    err = refused(capsys, root, merged)
    assert "line 3, column 'user': id '99999999999999999999' does not fit a 64-bit integer" in err
    exact = write_batch(tmp_path / "exact.csv", [(BIG, 5000, T0 + 9 * DAY), (BIG - 1, BIG, T0 + 9 * DAY + 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["update", "--registry", str(root), "--data", str(exact)]) == 0
    after = ModelRegistry(root).load()
    assert after.user_ids.tolist()[-2:] == [BIG, BIG - 1] and after.item_ids.tolist()[-1] == BIG
    vocab = json.loads((root / "v000002" / "vocab.json").read_text())
    assert vocab["users"][-2:] == [BIG, BIG - 1]


# -- D8: absurd times ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, problem", [("inf", "is not a finite number"), ("-inf", "is not a finite number"),
                                            ("1e30", "is beyond the range of 64-bit seconds")])
def test_an_absurd_time_is_refused_naming_the_line_and_the_value(reg, tmp_path, capsys, value, problem):
    root, _ = reg
    batch = write_batch(tmp_path / "inf.csv", [(1000, 5000, T0 + 9 * DAY), (1001, 5001, value)])
    err = refused(capsys, root, batch)
    assert f"line 3, column 'time': time '{value}' {problem}" in err
    assert "nanoseconds" not in err and str(T0 + 9 * DAY) not in err


# -- D9 and D10: refusals touch nothing; no write follows a link ---------------------------------------

def test_a_refused_update_changes_no_byte_and_no_mtime_not_even_the_lock(reg, tmp_path, capsys):
    root, batches = reg
    lock = root / ".lock"
    os.utime(lock, ns=(1_000_000_000, 1_000_000_000))     # an old mtime, so any rewrite would show
    bad = write_batch(tmp_path / "ms.csv", [(1000, 5000, (T0 + 9 * DAY) * 1000)])
    refused(capsys, root, bad)                              # compares bytes, mtimes and modes
    assert lock.stat().st_mtime_ns == 1_000_000_000
    assert main(["update", "--registry", str(tmp_path / "absent"), "--data", str(batches[0])]) == 2
    assert "no model registry here" in capsys.readouterr().err and not (tmp_path / "absent").exists()


def test_a_linked_lock_or_journal_is_refused_and_its_target_left_alone(reg, tmp_path, capsys):
    root, batches = reg
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.utime(victim, ns=(1_000_000_000, 1_000_000_000))
    (root / ".lock").unlink()
    (root / ".lock").symlink_to(victim)
    err = refused(capsys, root, batches[0], named=root / ".lock")
    assert f"{root / '.lock'}: is a symbolic link" in err
    (root / ".lock").unlink()
    (root / ".lock").touch()
    (root / "journal.jsonl").rename(tmp_path / "journal.jsonl")
    (root / "journal.jsonl").symlink_to(victim)
    err = refused(capsys, root, batches[0], named=root / "journal.jsonl")
    assert f"{root / 'journal.jsonl'}: is a symbolic link" in err
    assert victim.read_text() == "precious\n" and victim.stat().st_mtime_ns == 1_000_000_000
    assert ModelRegistry(root).latest_version() == 1


def test_recommend_out_never_writes_through_a_planted_temp_link(reg, tmp_path, capsys):
    root, _ = reg
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "top.csv"
    (tmp_path / ".top.csv.tmp").symlink_to(victim)          # the temp name the old code used
    assert main(["recommend", "--registry", str(root), "--user", "1000", "--k", "3", "--out", str(out)]) == 0
    assert victim.read_text() == "precious\n"
    assert pd.read_csv(out)["rank"].tolist() == [1, 2, 3] and not out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".top")) == [".top.csv.tmp"]


# -- D11: one rule for a committed version ------------------------------------------------------------

def test_a_leftover_version_folder_is_hidden_refused_by_rollback_and_by_recommend_version(reg, capsys):
    root, batches = reg
    assert main(["update", "--registry", str(root), "--data", str(batches[0])]) == 0
    # As if killed between the folder's rename and LATEST: LATEST still names 1, no journal commit.
    (root / "LATEST").write_text("v000001\n")
    journal = (root / "journal.jsonl").read_text().splitlines()
    (root / "journal.jsonl").write_text("\n".join(line for line in journal if '"version": 2' not in line) + "\n")
    capsys.readouterr()
    assert main(["versions", "--registry", str(root), "--json"]) == 0
    assert [json.loads(line)["version"] for line in capsys.readouterr().out.splitlines()] == [1]
    assert main(["rollback", "--registry", str(root), "--to", "2"]) == 2
    assert "no committed version 2" in capsys.readouterr().err
    assert main(["recommend", "--registry", str(root), "--user", "1000", "--version", "2"]) == 2
    err = capsys.readouterr().err
    assert "version 2 is not a committed version" in err and "left over from an interrupted update" in err
    with pytest.raises(CheckpointError, match="not a committed version"):
        ModelRegistry(root).load(2)
    assert main(["recommend", "--registry", str(root), "--user", "1000", "--version", "1"]) == 0


# -- D12: exact duplicate rows in a batch ----------------------------------------------------------------

def test_a_batch_holding_every_row_twice_is_refused_unless_dropped_or_kept(reg, tmp_path, capsys):
    root, batches = reg
    once = pd.read_csv(batches[0])
    doubled = tmp_path / "doubled.csv"
    pd.concat([once, once]).to_csv(doubled, index=False)
    err = refused(capsys, root, doubled)
    assert f"{len(once)} of its {2 * len(once)} rows repeat an earlier row exactly" in err
    assert "--duplicates drop" in err and "--duplicates keep" in err
    reference = tmp_path / "reference"
    shutil.copytree(root, reference, symlinks=True)
    assert main(["update", "--registry", str(reference), "--data", str(batches[0])]) == 0
    assert main(["update", "--registry", str(root), "--data", str(doubled), "--duplicates", "drop"]) == 0
    assert f"{len(once)} exact duplicate rows dropped" in capsys.readouterr().err
    dropped, single = ModelRegistry(root).load(), ModelRegistry(reference).load()
    assert dropped.cumulative.rows == single.cumulative.rows
    assert dropped.user_ids.tolist() == single.user_ids.tolist()
    assert dropped.data[-1]["duplicates"] == {"mode": "drop", "rows": len(once)}
    import torch

    for name in ("user", "item"):
        assert torch.allclose(ModelRegistry(root).load_served(dropped)[name],
                              ModelRegistry(reference).load_served(single)[name], atol=1e-6)
    kept = tmp_path / "kept"
    shutil.copytree(tmp_path / "reg", kept, symlinks=True)
    (kept / "LATEST").write_text("v000001\n")                # start again from version 1
    report = update_once(kept, doubled, duplicates="keep")
    assert report.duplicates == {"mode": "keep", "rows": len(once)}
    assert ModelRegistry(kept).load().data[-1]["rows"] == 2 * len(once)


# -- private modes ------------------------------------------------------------------------------------

def test_registry_folders_are_0700_and_files_0600(initialised, reg, capsys):
    source, _ = initialised                       # written by init under umask 022
    root, batches = reg
    umask = os.umask(0o022)
    try:
        assert main(["update", "--registry", str(root), "--data", str(batches[0])]) == 0
    finally:
        os.umask(umask)
    for folder in (source, root):
        for path in [folder, *folder.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
