"""Sparsity patterns: an unstructured ratio or N:M (N pruned in every M consecutive inputs)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Pattern:
    """A pruning pattern: ``sparsity`` is the pruned fraction; ``n``/``m`` set for N:M."""

    sparsity: float
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        """True for N:M semi-structured patterns."""
        return self.m is not None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{100 * self.sparsity:g}%"

    def validate(self, in_features: int) -> None:
        """Raise if an N:M pattern does not tile a row of ``in_features`` inputs."""
        if self.is_nm and in_features % self.m:
            raise ValueError(f"pattern {self} needs in_features divisible by M={self.m}, "
                             f"got in_features={in_features}")


def parse_pattern(spec: str | float | Pattern) -> Pattern:
    """Parse "2:4", "4:8", "0.5", "50%" or 0.5 into a Pattern (clear errors otherwise)."""
    if isinstance(spec, Pattern):
        return spec
    allowed = "an unstructured ratio in (0, 1) such as 0.5 or '50%', or N:M with 0 < N < M"
    text = str(spec).strip()
    nm = re.fullmatch(r"(\d+)\s*:\s*(\d+)", text)
    if nm:
        n, m = int(nm[1]), int(nm[2])
        if not 0 < n < m:
            raise ValueError(f"pattern {text!r} is invalid: N:M needs 0 < N < M; allowed: {allowed}")
        return Pattern(n / m, n, m)
    try:
        ratio = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"pattern {spec!r} is not understood; allowed: {allowed}") from None
    if not 0 < ratio < 1:
        raise ValueError(f"sparsity {spec!r} is out of range; allowed: {allowed}")
    return Pattern(ratio)
