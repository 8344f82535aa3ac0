"""Checks every model card must pass: no local path, Hub ids only as dataset ids, rounded metrics."""

from __future__ import annotations

import re
import tempfile

import yaml

OFFLINE_SOURCES = {"embedded", "speeches", "fiction", "mix"}
_HUB_DATASET = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_LOCAL_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet", ".gz")


def front_matter(text: str) -> dict:
    """The card's YAML front matter."""
    assert text.startswith("---\n"), text[:80]
    return yaml.safe_load(text.split("---\n", 2)[1]) or {}


def local_paths(text: str) -> list[str]:
    """Every word of ``text`` that starts with '/' (a path of this machine), quoted or not."""
    return re.findall(r"(?:^|[\s`'\"(\[=])(/[^\s`'\")\],]*)", text, re.M)


def check_no_local_paths(text: str, *roots) -> None:
    """No absolute path and none of ``roots`` (nor the temporary directory) anywhere in the card."""
    assert local_paths(text) == [], local_paths(text)
    for root in (*roots, tempfile.gettempdir()):
        assert str(root) not in text, f"{root} in the card"


def front_matter_dataset_ids(text: str) -> list[str]:
    """The dataset ids of the front matter: ``datasets:`` and every model-index ``dataset.type``."""
    meta = front_matter(text)
    ids = list(meta.get("datasets") or [])
    for entry in meta.get("model-index") or []:
        ids += [r["dataset"]["type"] for r in entry.get("results") or []]
    return ids


def check_hub_dataset_ids(text: str, *local_names: str) -> None:
    """Every dataset id of the front matter looks like a Hub id and names no offline or local text."""
    for dataset in front_matter_dataset_ids(text):
        assert _HUB_DATASET.match(dataset), dataset
        assert dataset not in OFFLINE_SOURCES and dataset not in local_names, dataset
        assert not dataset.startswith(("hf:", "mix")) and not dataset.endswith(_LOCAL_SUFFIXES), dataset


def _decimals(value) -> int:
    text = repr(float(value))
    return 0 if "e" in text or "." not in text else len(text.split(".")[1].rstrip("0"))


def check_rounded_metrics(text: str, most: int = 4) -> list[float]:
    """Model-index values and table numbers have at most ``most`` decimals; returns the values."""
    values = [m["value"] for entry in front_matter(text).get("model-index") or []
              for r in entry.get("results") or [] for m in r["metrics"]]
    for value in values:
        assert _decimals(value) <= most, value
    for line in text.splitlines():
        if line.startswith("|"):
            for digits in re.findall(r"\d+\.(\d+)", line):
                assert len(digits) <= most, line
    return values
