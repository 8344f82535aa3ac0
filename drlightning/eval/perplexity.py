"""Perplexity over non-overlapping windows (WikiText-2 / SparseGPT protocol)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def _window_nll(logits: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of one window, in float32."""
    return F.cross_entropy(logits[:-1].float(), window[1:], reduction="sum")


def eval_windows(tokens: torch.LongTensor, seqlen: int, max_windows: int | None) -> torch.Tensor:
    """The (count, seqlen) non-overlapping windows of ``tokens`` (1, N) that perplexity scores."""
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must have shape (1, N), got {tuple(tokens.shape)}")
    if not isinstance(seqlen, int) or seqlen < 2:
        raise ValueError(f"seqlen={seqlen!r} must be an integer ≥ 2")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows={max_windows} must be ≥ 1 (or None for all)")
    n = tokens.shape[1]
    if n < seqlen:
        raise ValueError(f"evaluation text has {n} tokens, fewer than one window of "
                         f"seqlen={seqlen}")
    count = n // seqlen if max_windows is None else min(n // seqlen, max_windows)
    return tokens[0, : count * seqlen].reshape(count, seqlen)


def perplexity(
    model: torch.nn.Module,
    tokens: torch.LongTensor,
    seqlen: int,
    batch_size: int = 4,
    max_windows: int | None = None,
    progress: bool = True,
) -> float:
    """exp(mean token NLL) over the N // seqlen non-overlapping windows of ``tokens`` (1, N).

    Each window predicts its own tokens 2..seqlen; ``max_windows`` keeps only the first windows.
    Logits exist for one batch at a time and are upcast to float32 one window at a time.
    """
    windows = eval_windows(tokens, seqlen, max_windows)
    count = windows.shape[0]
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be ≥ 1")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def batch_logits():
        for start in tqdm(range(0, count, batch_size), desc="perplexity", unit="batch",
                          disable=not progress, leave=False):
            yield model(input_ids=windows[start:start + batch_size].to(device),
                        use_cache=False).logits

    try:
        with torch.no_grad():
            return perplexity_of_logits(windows, batch_size, batch_logits(), device)
    finally:
        model.train(was_training)


def perplexity_of_logits(windows: torch.Tensor, batch_size: int, logits, device) -> float:
    """exp(mean next-token NLL) of ``windows`` (count, seqlen) given each batch's logits in turn
    (an iterable, so only one batch's logits exist at a time); NLL summed in float64, window by
    window in order."""
    count, seqlen = windows.shape
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start, batch_logits in zip(range(0, count, batch_size), logits, strict=True):
        batch = windows[start:start + batch_size].to(device)
        for row in range(batch.shape[0]):
            total += _window_nll(batch_logits[row], batch[row]).double()
        del batch_logits
    return math.exp(total.item() / (count * (seqlen - 1)))
