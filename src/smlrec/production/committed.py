"""Which versions of a registry folder are committed: the one rule ``versions``, ``rollback`` and
``recommend --version`` share (ModelRegistry delegates here).

Committed: every version up to the one ``LATEST`` names, and those the journal records as
committed (a commit event, or the versions a rollback stepped back from). A version folder above
``LATEST`` that the journal does not name is left over from an update killed between the folder's
rename and ``LATEST`` and is never served. This module imports neither torch nor numpy, so a
light query path can apply the same rule (the package's ``__init__`` still imports them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

VERSION_RE = re.compile(r"^v(\d{6})$")


def version_name(version: int) -> str:
    return f"v{version:06d}"


def latest_version(root: Path) -> int | None:
    """The committed version named by ``root/LATEST`` (None for an empty registry)."""
    path = Path(root) / "LATEST"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    match = VERSION_RE.match(text)
    if not match:
        raise CheckpointError(f"{path}: corrupt (expected a version such as v000001, found {text[:40]!r})")
    return int(match.group(1))


def journal(root: Path) -> list[dict[str, Any]]:
    """The journal's events, oldest first (a torn last line, from a crash, is skipped)."""
    try:
        lines = (Path(root) / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def journaled(root: Path) -> set[int]:
    """Versions the journal records as committed (including those a rollback stepped back from)."""
    found: set[int] = set()
    for event in journal(root):
        if event.get("event") == "commit":
            found.add(int(event["version"]))
        elif event.get("event") == "rollback":
            found.update(int(v) for v in event.get("committed", []))
    return found


def committed_versions(root: Path) -> list[int]:
    """Committed versions on disk, oldest first."""
    root = Path(root)
    latest = latest_version(root)
    if latest is None or not root.is_dir():
        return []
    named = journaled(root)
    found = [int(m.group(1)) for p in root.iterdir() if (m := VERSION_RE.match(p.name))]
    return sorted(v for v in found if v <= latest or v in named)


def require_committed(root: Path, version: int) -> None:
    """CheckpointError unless ``version`` is committed: naming the folder, and saying whether it
    is missing or a leftover of an interrupted update."""
    committed = committed_versions(root)
    if version in committed:
        return
    folder = Path(root) / version_name(version)
    listed = f"committed versions: {', '.join(map(str, committed)) or 'none'}"
    if not folder.exists():
        raise CheckpointError(f"{folder}: version {version} is missing ({listed})")
    raise CheckpointError(f"{folder}: version {version} is not a committed version (its folder is left "
                          f"over from an interrupted update, never committed; {listed})")
