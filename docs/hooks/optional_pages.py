"""mkdocs hooks for the docs site (mkdocs.yml, ``hooks:``).

* Pages that other branches add (baselines.md, tuning.md) are in the nav; until their file exists
  the entry is dropped here, so ``mkdocs build --strict`` passes before and after they land.
* A relative link from a page to a file outside ``docs/`` (``../BENCHMARKS.md``) is shown as the
  file's name in code: the site holds only docs/, and mkdocs would warn of a missing page.
"""

from __future__ import annotations

import re
from pathlib import Path

OPTIONAL_PAGES = {"baselines.md", "tuning.md"}


def _keep(entry, docs: Path) -> bool:
    target = next(iter(entry.values())) if isinstance(entry, dict) else entry
    return not (isinstance(target, str) and target in OPTIONAL_PAGES and not (docs / target).is_file())


def on_config(config, **kwargs):
    docs = Path(config["docs_dir"])
    config["nav"] = [entry for entry in config["nav"] if _keep(entry, docs)]
    return config


_OUTSIDE = re.compile(r"\[([^\]]+)\]\((\.\./[^)#\s]+)(#[^)]*)?\)")


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    docs = Path(config["docs_dir"]).resolve()

    def replace(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        path = (docs / Path(page.file.src_uri).parent / target).resolve()
        if docs in path.parents or not path.exists():
            return match.group(0)   # a page of the site, or a broken link mkdocs should report
        return text if text.startswith("`") else f"`{text}`"

    return _OUTSIDE.sub(replace, markdown)
