"""Where text comes from: Python's own docs, local files, or Hugging Face Hub datasets."""

from __future__ import annotations

import codecs
import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from .mix import FICTION, MIX, fiction_documents, mixed_documents
from .speeches import SPEECHES, speech_documents

Part = Literal["calibration", "evaluation"]
PARTS = ("calibration", "evaluation")
SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
NAMED = ("embedded", "speeches", "fiction", "mix", "mix:<source>,<source>", "c4", "wikitext2",
         "hf:<dataset>[:<config>]")
C4_FILES = {
    "calibration": ("train", "en/c4-train.00000-of-01024.json.gz"),
    "evaluation": ("validation", "en/c4-validation.00000-of-00008.json.gz"),
}
C4_EVAL_DOCS = 1100
EMBEDDED_CALIBRATION_FRACTION = 0.8


class HubUnavailableError(ConnectionError):
    """A Hugging Face Hub dataset could not be loaded (offline, or no such dataset)."""


@lru_cache(maxsize=1)
def _embedded_parts() -> tuple[str, str]:
    """Python's pydoc topics, split at the topic boundary nearest 80% of the text."""
    from pydoc_data.topics import topics

    texts = [topics[key] for key in sorted(topics)]
    total = sum(len(t) for t in texts)
    seen, cut = 0, len(texts) - 1
    for i, text in enumerate(texts):
        seen += len(text)
        if seen >= EMBEDDED_CALIBRATION_FRACTION * total:
            cut = i + 1
            break
    cut = min(max(cut, 1), len(texts) - 1)
    return "\n\n".join(texts[:cut]), "\n\n".join(texts[cut:])


def embedded_text(part: Part) -> str:
    """The calibration (~80%) or evaluation (~20%) part of Python's bundled documentation."""
    calibration, evaluation = _embedded_parts()
    return calibration if _check_part(part) == "calibration" else evaluation


def _check_part(part: str) -> str:
    if part not in PARTS:
        raise ValueError(f"part={part!r} must be one of {PARTS}")
    return part


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def _read_text(path: Path) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.lower().endswith(".gz") \
            else path.read_bytes()
    except (gzip.BadGzipFile, EOFError) as err:
        raise ValueError(f"{path}: not a valid gzip file ({err})") from err
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err.start) from err


def _not_utf8(path: Path, at: int) -> ValueError:
    return ValueError(f"{path}: not valid UTF-8 at byte {at}; text files must be UTF-8 encoded "
                      "(convert it, e.g. with iconv)")


def _field(record: Any, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if field not in record:
        raise ValueError(f"{where}: no text field {field!r}; available keys: {sorted(record)}")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def _json_lines(text: str, path: Path, field: str) -> list[str]:
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: invalid JSON ({err.msg})") from err
            docs.append(_field(record, field, f"{path}:{n}"))
    return docs


def _json(text: str, path: Path, field: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _json_lines(text, path, field)
    records = data if isinstance(data, list) else [data]
    return [_field(r, field, f"{path}[{i}]") for i, r in enumerate(records)]


def _parquet(path: Path, field: str) -> list[str]:
    import pyarrow.parquet as pq

    columns = pq.read_schema(path).names
    if field not in columns:
        raise ValueError(f"{path}: no text column {field!r}; available columns: {columns}")
    return [v if isinstance(v, str) else "" for v in pq.read_table(path, columns=[field])
            .column(field).to_pylist()]


def _read_file(path: Path, field: str) -> list[str]:
    suffix = _suffix(path)
    if suffix is None:
        raise ValueError(f"{path}: unsupported file type; supported: {', '.join(SUFFIXES)}")
    if suffix == ".parquet":
        docs = _parquet(path, field)
    else:
        text = _read_text(path)
        docs = [text] if suffix.startswith(".txt") else (
            _json_lines(text, path, field) if suffix.startswith(".jsonl")
            else _json(text, path, field))
    if not any(doc.strip() for doc in docs):
        raise ValueError(f"{path}: contains no text (empty file or only blank '{field}' values)")
    return docs


def local_files(source: str, setting: str = "text source") -> list[Path]:
    """The files of a local text source: the file itself, or a folder's supported files."""
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{setting}={source!r}: no such file or directory (named "
                                f"sources: {', '.join(NAMED)})")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) is not None)
    if not files:
        raise ValueError(f"{path}: directory holds no text files; supported: {', '.join(SUFFIXES)}")
    return files


def text_bytes(path: Path, chunk: int = 1 << 20) -> int | None:
    """Bytes of (decompressed) text in ``path``, checked to be valid UTF-8 while streaming it
    (constant memory); ``None`` for Parquet, whose text is checked when read."""
    if _suffix(path) == ".parquet":
        return None
    decoder = codecs.getincrementaldecoder("utf-8")()
    total = 0
    try:
        with (gzip.open(path) if path.name.lower().endswith(".gz") else path.open("rb")) as f:
            while block := f.read(chunk):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as err:
                    raise _not_utf8(path, total + err.start) from err
                total += len(block)
            decoder.decode(b"", final=True)
    except (gzip.BadGzipFile, EOFError) as err:
        raise ValueError(f"{path}: not a valid gzip file ({err})") from err
    except UnicodeDecodeError as err:
        raise _not_utf8(path, total - len(err.object) + err.start) from err
    return total


def _local(source: str, field: str) -> list[str]:
    return [doc for f in local_files(source) for doc in _read_file(f, field)]


def _hub(field: str, *args: Any, **kwargs: Any) -> list[str]:
    """``datasets.load_dataset(*args, **kwargs)[field]``, with a clear error when offline."""
    import datasets

    try:
        ds = datasets.load_dataset(*args, **kwargs)
    except OSError as err:  # ConnectionError, LocalEntryNotFoundError, DatasetNotFoundError...
        raise HubUnavailableError(
            f"could not load dataset {args[0]!r} from the Hugging Face Hub: the hub could not be "
            f"reached or the dataset does not exist ({type(err).__name__}: {err}). Without hub "
            "access use a local path (.txt/.jsonl/.json/.parquet file or folder) or 'embedded'."
        ) from err
    if field not in ds.column_names:
        raise ValueError(f"dataset {args[0]!r}: no text field {field!r}; "
                         f"available keys: {ds.column_names}")
    return list(ds[field])


def _hf(spec: str, part: str, field: str) -> list[str]:
    dataset, _, config = spec.partition(":")
    if not dataset or ":" in config:
        raise ValueError(f"hub source 'hf:{spec}' must look like 'hf:<dataset>[:<config>]'")
    args = (dataset, config) if config else (dataset,)
    if part == "calibration":
        return _hub(field, *args, split="train")
    try:
        return _hub(field, *args, split="test")
    except ValueError as err:
        if not str(err).startswith("Unknown split"):
            raise
        return _hub(field, *args, split="validation")


def load_documents(source: str, part: Part = "calibration", text_field: str = "text") -> list[str]:
    """The documents of ``source`` for calibration or evaluation (single-text sources: one).

    ``source`` is "embedded", "speeches" (a second, held-out domain: State of the Union addresses
    1934–1979 / 1980 on), "fiction" (Sherlock Holmes stories: eight / four), "mix" or
    "mix:<source>,<source>,…" (offline sources in equal shares, see :mod:`.mix`), "c4" (paper
    protocol: train shard 0 / validation shard 0),
    "wikitext2" (train / test), "hf:<dataset>[:<config>]" (train / test or validation) or a
    local .txt/.jsonl/.json/.parquet file (also .gz for text and JSON) or a folder of them.
    Local files are used whole for either part.
    """
    _check_part(part)
    if source == "embedded":
        return [embedded_text(part)]
    if source == SPEECHES:
        return list(speech_documents(part))
    if source == FICTION:
        return list(fiction_documents(part))
    if source == MIX or source.startswith(MIX + ":"):
        return mixed_documents(source, part, load_documents)
    if source == "c4":
        split, file = C4_FILES[part]
        return _hub("text", "allenai/c4", data_files={split: file}, split=split)
    if source == "wikitext2":
        lines = _hub("text", "wikitext", "wikitext-2-raw-v1",
                     split="train" if part == "calibration" else "test")
        return [(" " if part == "calibration" else "\n\n").join(lines)]
    if source.startswith("hf:"):
        return _hf(source[3:], part, text_field)
    return _local(source, text_field)


def load_eval_text(source: str, text_field: str = "text") -> str:
    """The evaluation text: documents joined with "\\n\\n" (C4: first 1100 joined with " ")."""
    docs = load_documents(source, "evaluation", text_field)
    if source == "c4":
        return " ".join(docs[:C4_EVAL_DOCS])
    return "\n\n".join(docs)
