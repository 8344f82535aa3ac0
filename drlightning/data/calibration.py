"""Tokenisation and SparseGPT/Wanda-style random calibration windows."""

from __future__ import annotations

import random
from typing import Any

import torch


def tokenize_text(tokenizer: Any, text: str, add_special_tokens: bool = True) -> torch.LongTensor:
    """Tokenise ``text`` once into a (1, N) LongTensor, without the "longer than max" warning.

    ``add_special_tokens=False`` for text that already holds them (a rendered chat template).
    """
    from transformers import PreTrainedTokenizerBase

    kwargs: dict[str, Any] = {"verbose": False} if isinstance(tokenizer, PreTrainedTokenizerBase) else {}
    if not add_special_tokens:
        kwargs["add_special_tokens"] = False
    ids = tokenizer(text, **kwargs)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)


class _TokenCache:
    """Tokenise each document at most once, on first use."""

    def __init__(self, tokenizer: Any, documents: list[str], add_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.documents = documents
        self.add_special_tokens = add_special_tokens
        self.tokens: dict[int, torch.Tensor] = {}

    def __call__(self, index: int) -> torch.Tensor:
        if index not in self.tokens:
            self.tokens[index] = tokenize_text(self.tokenizer, self.documents[index],
                                              self.add_special_tokens)[0]
        return self.tokens[index]


def windows_needed(nsamples: int, seqlen: int, held_out: int = 0) -> str:
    """``nsamples × seqlen = … tokens`` (with ``held_out`` extra windows counted in)."""
    if not held_out:
        return f"nsamples × seqlen = {nsamples} × {seqlen} = {nsamples * seqlen} tokens"
    return (f"(nsamples + held_out) × seqlen = ({nsamples} + {held_out}) × {seqlen} = "
            f"{(nsamples + held_out) * seqlen} tokens")


def knobs(held_out: int = 0) -> str:
    """The settings that ask for less text."""
    return "data.nsamples/data.seqlen" + ("/data.held_out" if held_out else "")


def _check_enough(cache: _TokenCache, nsamples: int, seqlen: int, held_out: int = 0) -> None:
    """Raise unless documents longer than ``seqlen`` hold ≥ (nsamples + held_out) × seqlen tokens.

    Documents are tokenised in order only until enough text is found, so a large corpus
    (a C4 shard) is not tokenised whole.
    """
    need = (nsamples + held_out) * seqlen
    held, longest = 0, 0
    for index in range(len(cache.documents)):
        count = cache(index).numel()
        longest = max(longest, count)
        if count > seqlen:
            held += count
            if held >= need:
                return
    if held == 0:
        raise ValueError(f"no calibration document is longer than seqlen={seqlen} tokens (the "
                         f"longest has {longest}); lower seqlen or give longer text")
    raise ValueError(f"too little calibration text: need {windows_needed(nsamples, seqlen, held_out)}"
                     f", the text holds {held} (in documents longer than seqlen); lower "
                     f"{knobs(held_out)} or give more text")


HELD_OUT_TRIES = 1000
"""Draws per held-out window before giving up on finding text no fitted window covers."""


def calibration_windows(
    tokenizer: Any, documents: list[str], nsamples: int, seqlen: int, seed: int = 0,
    add_special_tokens: bool = True, held_out: int = 0,
) -> torch.LongTensor:
    """``nsamples`` random windows of ``seqlen`` tokens, then ``held_out`` more that share no
    token position with them; shape (nsamples + held_out, seqlen).

    Paper protocol: seed the RNG; per sample draw random documents until one has more than
    ``seqlen`` tokens, then a random start in it. A private ``random.Random(seed)`` gives the
    same draws as ``random.seed(seed)`` without touching the global RNG, and the first
    ``nsamples`` windows do not depend on ``held_out``. Held-out windows are drawn the same way
    after them, each redrawn while it overlaps a fitted window of the same document.
    ``add_special_tokens=False`` for documents that already hold them (rendered chats).
    """
    if not isinstance(nsamples, int) or nsamples < 1:
        raise ValueError(f"nsamples={nsamples!r} must be an integer ≥ 1")
    if not isinstance(seqlen, int) or seqlen < 2:
        raise ValueError(f"seqlen={seqlen!r} must be an integer ≥ 2")
    if not documents:
        raise ValueError("no calibration documents given")
    if not isinstance(held_out, int) or isinstance(held_out, bool) or held_out < 0:
        raise ValueError(f"held_out={held_out!r} must be an integer ≥ 0 (extra windows)")
    cache = _TokenCache(tokenizer, documents, add_special_tokens)
    _check_enough(cache, nsamples, seqlen, held_out)
    rng = random.Random(seed)

    def draw() -> tuple[int, int]:
        while True:
            index = rng.randint(0, len(documents) - 1)
            if cache(index).numel() > seqlen:
                return index, rng.randint(0, cache(index).numel() - seqlen - 1)

    spans = [draw() for _ in range(nsamples)]
    for n in range(held_out):
        for _ in range(HELD_OUT_TRIES):
            index, start = draw()
            if all(i != index or abs(s - start) >= seqlen for i, s in spans[:nsamples]):
                spans.append((index, start))
                break
        else:
            raise ValueError(f"held_out={held_out}: found only {n} windows of {seqlen} tokens that "
                             f"no fitted window covers in {HELD_OUT_TRIES} draws; the calibration "
                             "text is too short for them: give more text or fewer windows")
    return torch.stack([cache(i)[s:s + seqlen] for i, s in spans])
