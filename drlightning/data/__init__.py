"""Text sources and calibration windows."""

from .calibration import calibration_windows, tokenize_text
from .corpora import (
    SUFFIXES,
    HubUnavailableError,
    embedded_text,
    load_documents,
    load_eval_text,
)

__all__ = [
    "SUFFIXES",
    "HubUnavailableError",
    "calibration_windows",
    "embedded_text",
    "load_documents",
    "load_eval_text",
    "tokenize_text",
]
