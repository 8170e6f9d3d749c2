"""A versioned model registry on disk: the deployed model and everything the next update needs.

Layout of a registry folder::

    REGISTRY/
      LATEST                  "v000003": the committed version (replaced atomically)
      .lock                   fcntl lock held by the one update allowed at a time
      v000001/
        manifest.json         version, strategy, settings, periods, data hashes, package version,
                              created time, and the sha256 and size of every other file
        weights.safetensors   every tensor/array: the strategy state and the cumulative arrays
        state.json            the JSON skeleton that puts those tensors back into nested dicts
        vocab.json            raw user and item ids; position = index in the tables
        served.safetensors    (inner-product strategies) the served user/item tables and the cold
                              user's scores, so queries need not rebuild the strategy
      v000002/ ...

The cumulative state is what a replay would know when building the next period, without the
old interactions: the row count so far (the next period's ``start``), the number of items seen,
the (user, item) pairs seen with the position each was first seen (the ``PairIndex`` arrays), the
last applied time, and the previous period's rows (SML step 2 needs D_t when D_{t+1} arrives).

Crash safety: a version is written into a temporary folder, every file fsynced, the folder renamed
to ``vNNNNNN``, and only then ``LATEST`` is replaced (temp file + rename). The commit point is the
rename of ``LATEST``: a version folder newer than ``LATEST`` is left over from an interrupted
update and is discarded by the next one, unless the journal records it as committed (versions
above ``LATEST`` after a rollback are kept: versions are never deleted). Loading checks every file against the manifest's sha256,
so a corrupt or truncated file is a :class:`CheckpointError` naming it, and older versions stay
loadable. Nothing is pickled and nothing goes through ``torch.load``.

File safety: folders are created 0700 and files 0600 (``vocab.json`` holds raw user ids). No write
follows a symbolic link: files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under unique
names (temp folders by ``mkdtemp``), the journal is appended through ``O_NOFOLLOW``, and the lock
file is opened read-only with ``O_NOFOLLOW`` and never written, so a refused update changes no
byte and no mtime in the folder. A symbolic link where the registry expects its lock or journal
is refused with a CheckpointError naming it.

Committed versions, one rule (:meth:`ModelRegistry.versions`): every version up to ``LATEST``
and those the journal records as committed. ``versions`` lists exactly these, ``rollback`` and
``load(N)`` (``recommend --version N``) refuse any other folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .. import __version__
from ..data.pairs import PairIndex, pair_keys
from ..errors import CheckpointError
from . import committed
from .manifest import id_array, read_bytes, read_json, verified
from .committed import VERSION_RE, version_name
from .events import emit
from .state import flatten, unflatten

FORMAT = 1
FILES = ("weights.safetensors", "state.json", "vocab.json")
SERVED = "served.safetensors"   # optional: the served tables, precomputed for queries (recommender.py)
FILE_MODE, FOLDER_MODE = 0o600, 0o700   # vocab.json holds raw user ids: private to the owner


@dataclass
class PreviousPeriod:
    """The rows of the last applied period (indices into the tables), kept for SML."""

    index: int
    start: int
    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    items_seen: np.ndarray


@dataclass
class Cumulative:
    """What has been applied so far, as arrays (never the old interactions themselves)."""

    rows: int                     # interactions applied so far = the next period's start
    items_seen: int               # distinct items seen so far (indices 0..items_seen-1)
    pair_keys: np.ndarray         # sorted int64 keys of the (user, item) pairs seen
    pair_first: np.ndarray        # position at which each pair was first seen
    last_time: int                # latest interaction time applied (unix seconds)
    next_period: int              # index the next period gets
    previous: PreviousPeriod | None = None

    @property
    def seen(self) -> PairIndex:
        return PairIndex(self.pair_keys, self.pair_first)

    def extended(self, users: np.ndarray, items: np.ndarray, times: np.ndarray,
                 items_seen: np.ndarray) -> "Cumulative":
        """The cumulative state after appending one period's rows (vectorised)."""
        start = self.rows
        positions = np.arange(start, start + len(users), dtype=np.int64)
        keys = np.concatenate([self.pair_keys, pair_keys(users, items)])
        first = np.concatenate([self.pair_first, positions])
        # np.unique keeps the first occurrence: an old pair keeps its old (earlier) position.
        merged, where = np.unique(keys, return_index=True)
        previous = PreviousPeriod(self.next_period, start, np.asarray(users, np.int64),
                                  np.asarray(items, np.int64), np.asarray(times, np.int64),
                                  np.asarray(items_seen, np.int64))
        return Cumulative(rows=start + len(users), items_seen=int(items_seen[-1]), pair_keys=merged,
                          pair_first=first[where], last_time=max(self.last_time, int(times.max())),
                          next_period=self.next_period + 1, previous=previous)

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rows": self.rows, "items_seen": self.items_seen,
                                 "pair_keys": self.pair_keys, "pair_first": self.pair_first,
                                 "last_time": self.last_time, "next_period": self.next_period}
        if self.previous is not None:
            state["previous"] = dict(vars(self.previous))
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Cumulative":
        previous = state.get("previous")
        return cls(rows=int(state["rows"]), items_seen=int(state["items_seen"]),
                   pair_keys=np.asarray(state["pair_keys"], np.int64),
                   pair_first=np.asarray(state["pair_first"], np.int64),
                   last_time=int(state["last_time"]), next_period=int(state["next_period"]),
                   previous=PreviousPeriod(**previous) if previous else None)


@dataclass
class Checkpoint:
    """One version's content: what a strategy needs to continue, and the ids it serves."""

    strategy: str
    settings: dict[str, Any]            # ReplaySettings as plain data
    strategy_state: dict[str, Any]
    user_ids: np.ndarray
    item_ids: np.ndarray
    cumulative: Cumulative
    data: list[dict[str, Any]]          # one entry per applied batch: sha256, source, rows, periods
    reading: dict[str, Any] = field(default_factory=dict)   # how batches are read (ingest.Reading)
    served: dict[str, torch.Tensor] | None = None           # what queries use (see recommender.py)
    version: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_items(self) -> int:
        return int(len(self.item_ids))

    @property
    def applied_hashes(self) -> dict[str, int]:
        """sha256 of every applied batch -> the period index it became."""
        return {entry["sha256"]: int(entry["period"]) for entry in self.data if entry.get("sha256")}


class ModelRegistry:
    """Versioned checkpoints in a folder: ``write`` a new version (under ``lock``), ``load`` one."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading ------------------------------------------------------------------------------
    @property
    def latest_path(self) -> Path:
        return self.root / "LATEST"

    def latest_version(self) -> int | None:
        """The committed version named by ``LATEST`` (None for an empty registry)."""
        return committed.latest_version(self.root)

    @property
    def journal_path(self) -> Path:
        return self.root / "journal.jsonl"

    def journal(self) -> list[dict[str, Any]]:
        """The journal's events, oldest first (a torn last line, from a crash, is skipped)."""
        return committed.journal(self.root)

    def _journaled(self) -> set[int]:
        return committed.journaled(self.root)

    def versions(self) -> list[int]:
        """Committed versions on disk (up to LATEST, and any newer ones a rollback left), oldest
        first: the one rule (committed.py) that ``rollback`` and ``load(N)`` also apply."""
        return committed.committed_versions(self.root)

    def load_served(self, checkpoint: "Checkpoint") -> dict[str, torch.Tensor] | None:
        """The served tables of a loaded version (checked against its manifest), None if it has none."""
        listed = checkpoint.manifest.get("files", {}).get(SERVED)
        if listed is None:
            return None
        path = self.root / version_name(checkpoint.version) / SERVED
        verified(path, listed)
        return _read_safetensors(path)

    def manifest(self, version: int) -> dict[str, Any]:
        """The manifest of ``version`` alone (no file checks; ``load`` verifies them)."""
        return read_json(self.root / version_name(version) / "manifest.json")

    def require_committed(self, version: int) -> None:
        """CheckpointError unless ``version`` is committed (the rule ``versions`` lists by)."""
        committed.require_committed(self.root, version)

    def load(self, version: int | None = None) -> Checkpoint:
        """Load ``version`` (default: the latest), checking every file; CheckpointError names a bad one.

        A given ``version`` must be committed (see :meth:`versions`): a folder left by an
        interrupted update is refused, as ``versions`` hides it and ``rollback`` refuses it.
        """
        if version is None:
            version = self.latest_version()
            if version is None:
                raise CheckpointError(f"{self.root}: no model registry here (no LATEST file); "
                                      "create one with `smlrec init`")
        else:
            self.require_committed(version)
        return self._load(version)

    def _load(self, version: int) -> Checkpoint:
        folder = self.root / version_name(version)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: version {version} is missing")
        manifest = read_json(folder / "manifest.json")
        files = manifest.get("files")
        if manifest.get("version") != version or not isinstance(files, dict):
            raise CheckpointError(f"{folder / 'manifest.json'}: not a manifest of version {version}")
        for name in FILES:
            verified(folder / name, files.get(name))
        tensors = _read_safetensors(folder / "weights.safetensors")
        skeleton = read_json(folder / "state.json")
        vocab = read_json(folder / "vocab.json")
        try:
            state = unflatten(tensors, skeleton, str(folder / "state.json"))
            cumulative = Cumulative.from_state(state["cumulative"])
            return Checkpoint(strategy=manifest["strategy"], settings=manifest["settings"],
                              strategy_state=state["strategy"],
                              user_ids=id_array(vocab["users"]), item_ids=id_array(vocab["items"]),
                              cumulative=cumulative, data=manifest["data"],
                              reading=manifest.get("reading") or {}, version=version, manifest=manifest)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{folder}: incomplete checkpoint ({type(err).__name__}: {err})") from None

    def load_latest_good(self) -> tuple[Checkpoint, list[str]]:
        """The newest committed version that loads, and the errors of newer ones it skipped."""
        skipped: list[str] = []
        try:
            latest = self.latest_version()
            candidates = sorted((v for v in self.versions() if latest is None or v <= latest), reverse=True)
        except CheckpointError as err:  # LATEST itself is corrupt: scan the folders
            skipped.append(str(err))
            candidates = sorted((int(m.group(1)) for p in self.root.iterdir()
                                 if (m := VERSION_RE.match(p.name))), reverse=True)
        for version in candidates:
            try:
                return self._load(version), skipped
            except CheckpointError as err:
                skipped.append(str(err))
        raise CheckpointError(f"{self.root}: no loadable version" + (f" ({'; '.join(skipped)})" if skipped else ""))

    # -- writing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, create: bool = False) -> Iterator[None]:
        """Hold the registry's update lock; a second holder gets a CheckpointError at once.

        The lock file is opened read-only and never written (a refused update changes nothing);
        who holds it is read from the kernel's lock table. ``create`` (``init``) creates the
        folder (0700); otherwise a missing folder is refused rather than created.
        """
        if create:
            self.root.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise CheckpointError(f"{self.root}: no model registry here (no such folder); "
                                  "create one with `smlrec init`")
        path = self.root / ".lock"
        fd = _open_lock(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                raise CheckpointError(f"{self.root}: another update holds the registry lock ({holder}); "
                                      "wait for it to finish (the lock frees itself if that process died)") from None
            _refuse_link(self.journal_path)   # refused before any work, not after the commit
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def write(self, checkpoint: Checkpoint) -> int:
        """Write ``checkpoint`` as the next version and commit it; call while holding ``lock()``."""
        self.root.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        _refuse_link(self.journal_path)      # before anything is written, not after the commit
        self._discard_uncommitted()
        # After a rollback the next version goes above every kept one: numbers are never reused.
        version = max([self.latest_version() or 0, *self.versions()]) + 1
        final = self.root / version_name(version)
        # A fresh, private (0700) folder under a unique name: nothing there can be a planted link.
        temp = Path(tempfile.mkdtemp(prefix=f".tmp-{version_name(version)}-", dir=self.root))
        tensors, skeleton = flatten({"strategy": checkpoint.strategy_state,
                                     "cumulative": checkpoint.cumulative.to_state()})
        contents = {
            "weights.safetensors": save_safetensors(tensors),
            "state.json": _json_bytes(skeleton),
            "vocab.json": _json_bytes({"users": checkpoint.user_ids.tolist(),
                                       "items": checkpoint.item_ids.tolist()}),
        }
        if checkpoint.served:
            contents[SERVED] = save_safetensors({k: v.detach().cpu().contiguous() for k, v in checkpoint.served.items()})
        for name, payload in contents.items():
            _write_file(temp / name, payload)
        periods = [entry["period"] for entry in checkpoint.data]
        manifest = {
            "format": FORMAT, "version": version, "strategy": checkpoint.strategy,
            "settings": checkpoint.settings, "package": {"name": "smlrec", "version": __version__},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "periods": {"first": min(periods, default=0), "last": max(periods, default=0),
                        "rows": checkpoint.cumulative.rows, "last_time": checkpoint.cumulative.last_time},
            "n_users": checkpoint.n_users, "n_items": checkpoint.n_items,
            "data": checkpoint.data, "reading": checkpoint.reading,
            "files": {name: {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
                      for name, payload in contents.items()},
        }
        _write_file(temp / "manifest.json", _json_bytes(manifest))
        _fsync_dir(temp)
        os.replace(temp, final)
        _fsync_dir(self.root)
        self._point_latest(version)  # the commit point
        _fsync_dir(self.root)
        self._journal({"event": "commit", "version": version, "created": manifest["created"]})
        checkpoint.version, checkpoint.manifest = version, manifest
        return version

    def rollback(self, version: int) -> int:
        """Serve ``version`` again: point LATEST at it (atomically); returns the version LATEST named.

        Call while holding ``lock()``. The version must load (every file checked). Newer versions
        are kept, and recorded as committed in the journal first, so no later update discards them;
        the next update builds on ``version`` and gets a new number above all of them.
        """
        latest = self.latest_version()
        if latest is None:
            raise CheckpointError(f"{self.root}: no model registry here (no LATEST file)")
        if version not in self.versions():
            raise CheckpointError(f"{self.root}: no committed version {version} (versions: "
                                  f"{', '.join(map(str, self.versions()))})")
        self.load(version)                          # refuse to serve a corrupt version
        _refuse_link(self.journal_path)
        committed = sorted(v for v in self.versions() if v > version)
        self._journal({"event": "rollback", "from": latest, "to": version, "committed": committed,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self._point_latest(version)
        emit("rollback", f"LATEST moved from version {latest} back to version {version}", level="warning",
             registry=str(self.root), previous=latest, version=version, kept=committed)
        return latest

    def _point_latest(self, version: int) -> None:
        """Replace LATEST atomically (a unique temp file renamed over it; a rename replaces a
        link named LATEST, never its target)."""
        temp = self.root / f".LATEST.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        _write_file(temp, (version_name(version) + "\n").encode())
        os.replace(temp, self.latest_path)
        _fsync_dir(self.root)

    def _journal(self, event: dict[str, Any]) -> None:
        """Append one event line and fsync it (not through _write_file: the journal is appended)."""
        try:
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE)
        except OSError as err:
            raise _refused_link(self.journal_path, err) from None
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _discard_uncommitted(self) -> None:
        """Remove temp folders and version folders newer than LATEST that were never committed
        (interrupted updates); versions a rollback stepped back from are kept."""
        latest = self.latest_version() or 0
        journaled = self._journaled()
        for path in self.root.iterdir():
            match = VERSION_RE.match(path.name)
            if path.name.startswith((".tmp-", ".LATEST.tmp-")) or (
                    match and int(match.group(1)) > latest and int(match.group(1)) not in journaled):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()   # a file, or a link (removing a link never touches its target)


def version_summary(registry: ModelRegistry, version: int, latest: int | None = None) -> dict[str, Any]:
    """One row of ``smlrec versions``, from the manifest alone (fast; files are not verified)."""
    try:
        manifest = registry.manifest(version)
    except CheckpointError as err:
        return {"version": version, "latest": version == latest, "created": "?", "strategy": "?",
                "periods": "?", "data_from": "?", "data_to": "?", "rows": "?", "source": f"unreadable: {err}"}
    data = manifest.get("data") or [{}]
    periods = manifest.get("periods", {})
    first = data[0].get("first_time")
    last = periods.get("last_time")
    return {"version": version, "latest": version == latest, "created": manifest.get("created", "?"),
            "strategy": manifest.get("strategy", "?"),
            "periods": f"{periods.get('first', '?')}..{periods.get('last', '?')}",
            "data_from": _day(first), "data_to": _day(last), "rows": periods.get("rows", "?"),
            "source": str(data[-1].get("source", "?")), "batch_sha256": data[-1].get("sha256")}


def _day(seconds: Any) -> str:
    if seconds is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(seconds)))


# ----------------------------------------------------------------------------------------------

def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=1, allow_nan=False).encode("utf-8")


def _write_file(path: Path, payload: bytes) -> None:
    """Create ``path`` (0600) and write ``payload``; refuses an existing file or link at ``path``
    (every caller writes under a fresh, unique name)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as err:
        raise _refused_link(path, err) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def _refused_link(path: Path, err: OSError) -> Exception:
    """The error for a registry file that cannot be opened safely (a link, or already there)."""
    if err.errno == errno.ELOOP or path.is_symlink():
        return CheckpointError(f"{path}: is a symbolic link; smlrec never follows links to a registry's "
                               "files (remove the link and retry)")
    if err.errno == errno.EEXIST:
        return CheckpointError(f"{path}: already exists (a temporary file of another writer?); not overwritten")
    return CheckpointError(f"{path}: cannot be written ({err.strerror})")


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise CheckpointError(f"{path}: is a symbolic link; smlrec never follows links to a registry's "
                              "files (remove the link and retry)")


def _open_lock(path: Path) -> int:
    """A read-only descriptor of the lock file, created (0600, empty) if missing; a link is refused."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(2):
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:      # another process created it just now: open theirs
                continue
            except OSError as err:
                raise _refused_link(path, err) from None
        except OSError as err:
            raise _refused_link(path, err) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CheckpointError(f"{path}: is not a regular file; remove it and retry")
        return fd
    raise CheckpointError(f"{path}: cannot be opened")


def _lock_holder(fd: int) -> str:
    """"pid N" of the process holding the flock on ``fd``, from /proc/locks (Linux), else "unknown"."""
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device:
                    return f"pid {fields[4]}"
    except OSError:
        pass
    return "holder unknown"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(read_bytes(path))
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors file ({err})") from None


