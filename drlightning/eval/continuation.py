"""A multiple-choice task generated deterministically from any text (offline zero-shot accuracy).

Each item (items never overlap): a passage of ``context_words`` words, and ``n_choices``
candidate continuations of ``continuation_words`` words — the true one and others
taken from random, non-overlapping places of the same text. A language model that
follows the text picks the true one; chance is 1/n_choices.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def continuation_items(text: str, n_items: int = 200, context_words: int = 40,
                       continuation_words: int = 10, n_choices: int = 4,
                       seed: int = 0) -> list[dict]:
    """The task's items: ``{"context", "choices", "label"}`` dicts (same input → same items)."""
    for name, value, low in (("n_items", n_items, 1), ("context_words", context_words, 1),
                             ("continuation_words", continuation_words, 1),
                             ("n_choices", n_choices, 2)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer ≥ {low}")
    words = text.split()
    span = context_words + continuation_words
    slots = len(words) // span
    if n_items > slots or len(words) < span + continuation_words * (n_choices - 1):
        raise ValueError(f"the text has {len(words)} words: at most {slots} non-overlapping items "
                         f"of {span} words; got n_items={n_items}")
    rng = random.Random(seed)
    starts = sorted(span * slot for slot in rng.sample(range(slots), n_items))
    items = []
    for start in starts:
        cut = start + context_words
        true = " ".join(words[cut : cut + continuation_words])
        choices = {true}
        while len(choices) < n_choices:
            other = rng.randrange(len(words) - continuation_words + 1)
            if abs(other - cut) >= continuation_words:
                choices.add(" ".join(words[other : other + continuation_words]))
        ordered = sorted(choices - {true})
        label = rng.randrange(n_choices)
        ordered.insert(label, true)
        items.append({"context": " ".join(words[start:cut]), "choices": ordered, "label": label})
    return items


def write_items(items: list[dict], path: Path) -> Path:
    """Write the items as JSONL (one item per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path
