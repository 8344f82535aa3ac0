"""The evaluation plan checked before a run writes anything: a bad ``run.eval`` value must not
surface only after hours of pruning (with ``run.eval.dense=false`` nothing evaluates before)."""

from __future__ import annotations

import torch

from .api import protocol_windows
from .perplexity import eval_windows
from .plan import EvalPlan


def _count(name: str, value, low: int, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = f"an integer ≥ {low}" + (" or null" if optional else "")
        raise ValueError(f"{name}={value!r}; allowed: {allowed}")


def check_eval_fields(plan: EvalPlan, prefix: str = "run.eval") -> None:
    """Every counting field of ``plan`` valid (``prefix``: how the user names the plan)."""
    _count(f"{prefix}.batch_size", plan.batch_size, 1, False)
    _count(f"{prefix}.max_windows", plan.max_windows, 1, True)
    _count(f"{prefix}.seqlen", plan.seqlen, 2, True)
    _count(f"{prefix}.task_items", plan.task_items, 1, False)
    _count(f"{prefix}.task_limit", plan.task_limit, 1, True)


def check_eval_windows(plan: EvalPlan, eval_tokens: dict[str, torch.Tensor], seqlen: int,
                       prefix: str = "run.eval") -> None:
    """Every tokenised evaluation text long enough for at least one window of ``seqlen`` tokens
    (the plan's fields are checked before, with the run's options: :func:`check_eval_fields`)."""
    for name, tokens in eval_tokens.items():
        try:
            eval_windows(tokens, seqlen, protocol_windows(name, plan.max_windows))
        except ValueError as err:
            raise ValueError(f"{prefix}.data {name!r}: {err}") from None
