"""Evaluation: perplexity over non-overlapping windows."""

from .perplexity import perplexity

__all__ = ["perplexity"]
