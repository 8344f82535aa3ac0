"""Text sources and calibration windows."""

from .calibration import calibration_windows, tokenize_text
from .chat import check_chat_source, load_conversations, render_chats
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
    "check_chat_source",
    "embedded_text",
    "load_conversations",
    "load_documents",
    "load_eval_text",
    "render_chats",
    "tokenize_text",
]
