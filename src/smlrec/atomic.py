"""Atomic writes: a result directory appears complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ConfigError


def check_out_dir(out: Path) -> None:
    """Refuse to write over an existing non-empty directory (before any work is done)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: already exists and is not empty; choose another --out")


def _set_default_permissions(directory: Path) -> None:
    """mkdtemp makes a private (0700) directory; give the finished one the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)


@contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; rename it to ``out`` if the block succeeds.

    ``out`` must not exist or be empty. On any error the temporary directory is removed and
    nothing is left behind.
    """
    out = Path(out)
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        _set_default_permissions(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
