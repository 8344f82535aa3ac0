"""Chat-formatted calibration text: JSONL conversations rendered with a tokenizer's chat template.

Each line of a .jsonl (or .jsonl.gz) file is one conversation, either ``{"messages": [...]}`` or
the bare list of messages; a message is ``{"role": <str>, "content": <str>, ...}`` (other keys
are passed on to the template). Each conversation becomes one calibration document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .corpora import NAMED, SUFFIXES, _read_text, _suffix, local_files
from .hub import source_dataset

CHAT_SUFFIXES = (".jsonl", ".jsonl.gz")
RECORD_FORMAT = ('{"messages": [{"role": "user", "content": "..."}, '
                 '{"role": "assistant", "content": "..."}]} (or the bare list of messages)')
Conversation = list[dict[str, Any]]


def _needs_jsonl(source: str, why: str) -> ValueError:
    return ValueError(f"chat_template=True reads conversations from a local JSONL source "
                      f"({' or '.join(CHAT_SUFFIXES)} file, or a folder of them), but source={source!r} "
                      f"{why}; use such a source, or chat_template=False for plain text")


def check_chat_source(source: str) -> None:
    """Fail early (without reading anything) when ``source`` cannot hold chat JSONL: a named
    source ("embedded", "c4", "wikitext2", "hf:...") or a file of another type (.txt, .json...).
    A folder, or a path that does not exist yet, is checked when it is read."""
    if source in NAMED or source.startswith("hf:") or source_dataset(source):
        raise _needs_jsonl(source, "is a named source of plain text")
    suffix = _suffix(Path(source))
    if suffix is not None and suffix not in CHAT_SUFFIXES:
        raise _needs_jsonl(source, f"is a {suffix} file")


def _messages(record: Any, where: str) -> Conversation:
    """The message list of one JSONL record, checked."""
    if isinstance(record, dict):
        if "messages" not in record:
            raise ValueError(f"{where}: no 'messages' field (keys: {sorted(record)}); each line "
                             f"must be a conversation: {RECORD_FORMAT}")
        messages = record["messages"]
    elif isinstance(record, list):
        messages = record
    else:
        raise ValueError(f"{where}: expected a conversation, got a JSON {type(record).__name__}; "
                         f"each line must be {RECORD_FORMAT}")
    if not isinstance(messages, list):
        raise ValueError(f"{where}: 'messages' must be a list of {{role, content}} objects, got a "
                         f"JSON {type(messages).__name__}")
    if not messages:
        raise ValueError(f"{where}: 'messages' is an empty list; a conversation needs at least one "
                         "message")
    for i, message in enumerate(messages):
        at = f"{where}: message {i}"
        if not isinstance(message, dict):
            raise ValueError(f"{at} must be a {{role, content}} object, got a JSON "
                             f"{type(message).__name__}: {message!r:.80}")
        missing = [k for k in ("role", "content") if k not in message]
        if missing:
            raise ValueError(f"{at} has no {' or '.join(repr(k) for k in missing)} (keys: "
                             f"{sorted(message)}); each message must be "
                             '{"role": "...", "content": "..."}')
        for key in ("role", "content"):
            if not isinstance(message[key], str):
                raise ValueError(f"{at}: {key!r} must be a string, got "
                                 f"{type(message[key]).__name__}: {message[key]!r:.80}")
    return messages


def _file_conversations(path: Path) -> list[tuple[str, Conversation]]:
    if _suffix(path) not in CHAT_SUFFIXES:
        raise ValueError(f"{path}: chat_template=True reads only {' / '.join(CHAT_SUFFIXES)} files "
                         f"of conversations; move it out of the folder or use chat_template=False")
    out = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: invalid JSON ({err.msg})") from err
            out.append((f"{path}:{n}", _messages(record, f"{path}:{n}")))
    if not out:
        raise ValueError(f"{path}: contains no conversations (empty file); each line must be "
                         f"{RECORD_FORMAT}")
    return out


def located_conversations(source: str) -> list[tuple[str, Conversation]]:
    """``("<file>:<line>", messages)`` for every conversation in a local JSONL file or folder."""
    check_chat_source(source)
    files = local_files(source, "source")
    if Path(source).expanduser().is_dir():  # every text file in the folder must be JSONL
        others = [str(f) for f in files if _suffix(f) not in CHAT_SUFFIXES]
        if others:
            raise ValueError(f"source={source!r}: chat_template=True reads only "
                             f"{' / '.join(CHAT_SUFFIXES)} files, but the folder also holds "
                             f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''} "
                             f"(supported text files: {', '.join(SUFFIXES)})")
    return [item for f in files for item in _file_conversations(f)]


def load_conversations(source: str) -> list[Conversation]:
    """The conversations (message lists) of a local JSONL file or folder of them, checked."""
    return [messages for _, messages in located_conversations(source)]


def check_chat_tokenizer(tokenizer: Any) -> None:
    """The tokenizer must have a chat template to render conversations with."""
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"chat_template=True but the tokenizer ({name}) has no chat template "
                         "(tokenizer.chat_template is None), so conversations cannot be rendered; "
                         "use an instruct/chat model's tokenizer, or set chat_template=False and "
                         "give plain text")


def render_chats(tokenizer: Any, conversations: list[Conversation],
                 locations: list[str] | None = None) -> list[str]:
    """One document per conversation: ``tokenizer.apply_chat_template(messages, tokenize=False)``
    (no generation prompt). ``locations`` ("<file>:<line>") name a conversation in errors.

    The text holds the template's special tokens (BOS, turn markers): tokenise it without
    adding special tokens again (``calibration_windows(..., add_special_tokens=False)``).
    """
    check_chat_tokenizer(tokenizer)
    if not conversations:
        raise ValueError("no conversations given")
    docs = []
    for i, messages in enumerate(conversations):
        where = locations[i] if locations else f"conversation {i}"
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception as err:  # jinja2 TemplateError, raise_exception(...) in the template
            raise ValueError(f"{where}: the tokenizer's chat template could not render this "
                             f"conversation ({type(err).__name__}: {err})") from err
        if not isinstance(text, str):
            raise ValueError(f"{where}: apply_chat_template returned {type(text).__name__}, "
                             "expected the rendered text")
        docs.append(text)
    return docs
