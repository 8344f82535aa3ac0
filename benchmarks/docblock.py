"""Write a benchmark's table into docs/benchmarks.md between ``<!-- name:begin/end -->`` markers."""

from __future__ import annotations

import re
from pathlib import Path


def write_block(path: Path, name: str, heading: str, text: str) -> None:
    """Replace the ``name`` block of ``path`` with ``text``, or append it under ``## heading``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text}\n{end}"
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if begin in doc:
        doc = re.sub(re.escape(begin) + ".*" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc += f"\n## {heading}\n\n{block}\n"
    path.write_text(doc, encoding="utf-8")


def read_block(path: Path, name: str) -> str | None:
    """The text between the ``name`` block's markers in ``path`` (None if it has none)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text(encoding="utf-8") if path.exists() else ""
    found = re.search(re.escape(begin) + "\n(.*)\n" + re.escape(end), doc, flags=re.S)
    return found.group(1) if found else None
