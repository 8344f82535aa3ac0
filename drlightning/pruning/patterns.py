"""Sparsity patterns: an unstructured ratio or N:M (N pruned in every M consecutive inputs)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

ALLOWED = "an unstructured ratio in (0, 1) such as 0.5 or '50%', or 'N:M' with integers 0 < N < M"


@dataclass(frozen=True)
class Pattern:
    """A pruning pattern: ``sparsity`` is the pruned fraction; ``n``/``m`` are set for N:M."""

    sparsity: float
    n: int | None = None
    m: int | None = None

    def __post_init__(self) -> None:
        if (self.n is None) != (self.m is None):
            raise ValueError(f"Pattern needs both n and m or neither, got n={self.n}, m={self.m}")
        if self.n is not None and self.m is not None:
            if not 0 < self.n < self.m:
                raise ValueError(f"pattern {self.n}:{self.m} is invalid; allowed: {ALLOWED}")
            if not math.isclose(self.sparsity, self.n / self.m):
                raise ValueError(f"pattern {self.n}:{self.m} needs sparsity {self.n / self.m}, "
                                 f"got {self.sparsity}")
        elif not 0 < self.sparsity < 1:
            raise ValueError(f"sparsity {self.sparsity!r} is out of range; allowed: {ALLOWED}")

    @property
    def is_nm(self) -> bool:
        """True for N:M semi-structured patterns."""
        return self.m is not None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{100 * self.sparsity:g}%"

    def validate(self, in_features: int) -> None:
        """Raise ValueError if an N:M pattern does not tile a row of ``in_features`` inputs."""
        if self.m is not None and in_features % self.m:
            raise ValueError(f"pattern {self} needs in_features divisible by M={self.m}, "
                             f"got in_features={in_features}")


def parse_pattern(spec: str | float | Pattern) -> Pattern:
    """Parse "2:4", "4:8", "0.5", "50%" or 0.5 into a Pattern (ValueError otherwise)."""
    if isinstance(spec, Pattern):
        return spec
    if isinstance(spec, bool) or not isinstance(spec, str | int | float):
        raise ValueError(f"pattern {spec!r} is not understood; allowed: {ALLOWED}")
    text = str(spec).strip()
    nm = re.fullmatch(r"(\d+)\s*:\s*(\d+)", text)
    if nm:
        n, m = int(nm[1]), int(nm[2])
        if not 0 < n < m:
            raise ValueError(f"pattern {text!r} is invalid: N:M needs 0 < N < M; "
                             f"allowed: {ALLOWED}")
        return Pattern(n / m, n, m)
    try:
        ratio = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"pattern {spec!r} is not understood; allowed: {ALLOWED}") from None
    if not 0 < ratio < 1:  # also rejects NaN
        raise ValueError(f"sparsity {spec!r} is out of range; allowed: {ALLOWED}")
    return Pattern(ratio)
