"""One role's rows of a fused linear (Phi-3's ``qkv_proj`` and ``gate_up_proj``).

A fused linear computes several roles' outputs with one weight, stacked by rows: ``qkv_proj`` is
q (n_heads·hd rows), k and v (n_kv·hd rows each); ``gate_up_proj`` is gate then up (I rows each).
The roles read the same input, so everything drlightning does to one role — importance, rotation,
permutation, pruning — touches only that role's rows. :class:`RowSlice` stands in for the role's
``nn.Linear``: its ``weight``/``bias`` are views into the fused parameters, so an in-place edit
(``copy_``) lands in the fused weight and the model is saved in its own fused layout.
"""

from __future__ import annotations

import torch
from torch import nn


class RowSlice:
    """Rows ``[start, stop)`` of a fused ``nn.Linear``, used like that role's own linear.

    Edits must be in place (``weight.copy_``); assigning a new ``weight`` is refused, because it
    could not reach the fused parameter. Input hooks go to the fused linear (every role of it reads
    the same input).
    """

    def __init__(self, fused: nn.Linear, start: int, stop: int) -> None:
        if not 0 <= start < stop <= fused.weight.shape[0]:
            raise ValueError(f"rows [{start}, {stop}) do not fit a fused linear with "
                             f"{fused.weight.shape[0]} rows")
        self.fused, self.start, self.stop = fused, start, stop

    @property
    def weight(self) -> torch.Tensor:
        """A view of the role's rows (shares storage with the fused weight)."""
        return self.fused.weight[self.start:self.stop]

    @weight.setter
    def weight(self, _value) -> None:
        raise TypeError("a fused role's weight is a view: edit it in place with weight.copy_()")

    @property
    def bias(self) -> torch.Tensor | None:
        """A view of the role's bias entries (None when the fused linear has no bias)."""
        bias = self.fused.bias
        return None if bias is None else bias[self.start:self.stop]

    @property
    def in_features(self) -> int:
        return self.fused.in_features

    @property
    def out_features(self) -> int:
        return self.stop - self.start

    def register_forward_pre_hook(self, hook, **kwargs):
        """Hook the fused linear's input (the same input for every role it holds)."""
        return self.fused.register_forward_pre_hook(hook, **kwargs)


def split_rows(fused: nn.Linear, roles: tuple[str, ...], rows: dict[str, int]) -> dict[str, RowSlice]:
    """The fused linear's roles (in stacking order) as row slices of ``rows[role]`` rows each."""
    total = sum(rows[r] for r in roles)
    if total != fused.weight.shape[0]:
        raise ValueError(f"a fused linear of roles {roles} has {fused.weight.shape[0]} rows; the "
                         f"config gives {' + '.join(str(rows[r]) for r in roles)} = {total}")
    out, start = {}, 0
    for role in roles:
        out[role] = RowSlice(fused, start, start + rows[role])
        start += rows[role]
    return out


class ExpertSlice:
    """One expert's gate, up or down matrix inside a Mixture-of-Experts block's 3-D parameters.

    transformers keeps the experts as ``gate_up_proj`` (E, 2·I, d: gate rows, then up rows) and
    ``down_proj`` (E, d, I); ``weight`` is a view of expert ``e``'s rows ``[start, stop)`` (all
    rows for down), edited in place like :class:`RowSlice`. An expert has no module of its own,
    so its inputs are captured from the experts block (see :mod:`drlightning.layer.experts`).
    """

    bias = None

    def __init__(self, param: torch.Tensor, expert: int, start: int | None = None,
                 stop: int | None = None) -> None:
        self.param, self.expert, self.start, self.stop = param, expert, start, stop

    @property
    def weight(self) -> torch.Tensor:
        """A view of the expert's matrix (shares storage with the 3-D parameter)."""
        return self.param[self.expert, self.start:self.stop]

    @weight.setter
    def weight(self, _value) -> None:
        raise TypeError("an expert's weight is a view: edit it in place with weight.copy_()")

    @property
    def in_features(self) -> int:
        return self.param.shape[-1]

    def register_forward_pre_hook(self, hook, **kwargs):
        raise TypeError("an expert has no module of its own; its inputs come from the experts "
                        "block (drlightning.layer.experts)")
