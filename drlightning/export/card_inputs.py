"""What the input model says about itself, for the model card: license and base model.

Only what the input states is taken, never guessed: a Hub id (the model spec itself, or a Hub
cache path ``…/models--owner--name/snapshots/…``), a GGUF file's ``general.*`` metadata, and the
YAML front matter of a ``README.md`` next to the weights (or in the Hub cache for a Hub id; no
network is used). An unreadable or silent input gives ``{}``: the card never fails an export.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]$")
_HUB_URL = re.compile(r"^https?://(?:www\.)?(?:huggingface\.co|hf\.co)/([\w.-]+/[\w.-]+?)/?$")
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+_-]*$")
# GGUF keys naming the model the file itself holds (llama.cpp's gguf-py metadata conventions)
_GGUF_SELF = ("general.source.huggingface.repository", "general.source.repo_url",
              "general.source.url", "general.repo_url", "general.url")
_FIELDS = ("license", "license_name", "license_link", "base_model")


def is_hub_id(spec: str) -> bool:
    """``owner/name`` that is no local path (nor a GGUF file name)."""
    spec = str(spec)
    return (bool(_HUB_ID.match(spec)) and not spec.startswith((".", "~"))
            and not spec.lower().endswith(".gguf") and not Path(spec).expanduser().exists())


def hub_cache_id(path: str | Path) -> str | None:
    """``owner/name`` of a path inside the Hub cache (``models--owner--name/snapshots/<rev>``)."""
    parts = Path(path).expanduser().parts
    for i, part in enumerate(parts[:-1]):
        pieces = part.split("--")
        if len(pieces) == 3 and pieces[0] == "models" and parts[i + 1] == "snapshots" \
                and all(pieces[1:]):
            return f"{pieces[1]}/{pieces[2]}"
    return None


def _hub_repo(value) -> str | None:
    """A Hub model id from an id or a huggingface.co URL; ``None`` for anything else."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    match = _HUB_URL.match(value)
    if match:
        repo = match.group(1)
        return None if repo.split("/")[0] in ("datasets", "spaces") else repo
    return value if _HUB_ID.match(value) and not value.lower().endswith(".gguf") else None


def _license(text, name=None, link=None) -> dict:
    """Hub license fields from a stated license: an identifier (``apache-2.0``) as it is, a URL
    or free text as ``license: other`` with ``license_link`` / ``license_name``."""
    if not isinstance(text, str) or not text.strip():
        return {}
    text = text.strip()
    if _LICENSE_ID.match(text.lower()) and text.lower() != "other":
        return {"license": text.lower()}
    out = {"license": "other"}
    if text.lower().startswith(("http://", "https://")):
        out["license_link"] = text
    elif text.lower() != "other":
        out["license_name"] = re.sub(r"[^a-z0-9.+]+", "-", text.lower()).strip("-") or "other"
    if isinstance(name, str) and name.strip():
        out["license_name"] = re.sub(r"[^a-z0-9.+]+", "-", name.lower()).strip("-") or "other"
    if isinstance(link, str) and link.strip():
        out["license_link"] = link.strip()
    return out


def gguf_fields(meta: dict) -> dict:
    """License and base model as a GGUF file's ``general.*`` metadata states them.

    The base model is the repository the file says it holds (``general.source.*``,
    ``general.repo_url``); failing that, the base model(s) it says it was made from
    (``general.base_model.N.repo_url``). Names without a Hub address (``general.name``,
    ``general.organization``) are not turned into ids.
    """
    out: dict = {}
    lic = _license(meta.get("general.license"), meta.get("general.license.name"),
                   meta.get("general.license.link"))
    if lic:
        out.update(lic, sources={"license": "the GGUF metadata (general.license)"})
    own = next(((key, repo) for key in _GGUF_SELF if (repo := _hub_repo(meta.get(key)))), None)
    if own:
        out["base_model"] = own[1]
        out.setdefault("sources", {})["base_model"] = f"the GGUF metadata ({own[0]})"
        return out
    count = meta.get("general.base_model.count")
    n = count if isinstance(count, int) and 0 < count < 64 else 1
    parents = [repo for i in range(n) if (repo := _hub_repo(meta.get(f"general.base_model.{i}.repo_url")))]
    if parents:
        out["base_model"] = parents[0] if len(parents) == 1 else parents
        out.setdefault("sources", {})["base_model"] = \
            "the GGUF metadata (general.base_model.*.repo_url: the model(s) the input was made from)"
    return out


def readme_fields(readme: Path) -> dict:
    """License and base model from a model card's YAML front matter (``{}`` without one)."""
    from huggingface_hub.repocard import metadata_load

    meta = metadata_load(readme) or {}
    out: dict = {}
    lic = meta.get("license")
    if isinstance(lic, str) and lic.strip():
        out["license"] = lic.strip()
        for key in ("license_name", "license_link"):
            if isinstance(meta.get(key), str) and meta[key].strip():
                out[key] = meta[key].strip()
        out["sources"] = {"license": f"the input's model card ({readme.name})"}
    base = meta.get("base_model")
    bases = [b for b in ([base] if isinstance(base, str) else base if isinstance(base, list) else [])
             if _hub_repo(b)]
    if bases:
        out["base_model"] = bases[0] if len(bases) == 1 else bases
        out.setdefault("sources", {})["base_model"] = \
            f"the input's model card ({readme.name}: the model(s) the input was made from)"
    return out


def _cached_readme(repo_id: str) -> Path | None:
    """The Hub model card of ``repo_id`` when the Hub cache already holds it (no download)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "README.md")
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def _merge(into: dict, new: dict) -> None:
    """Fields of ``new`` that ``into`` has not yet (license fields travel together)."""
    origin = new.get("sources", {})
    if "license" not in into and "license" in new:
        into.update({k: new[k] for k in ("license", "license_name", "license_link") if k in new})
        into.setdefault("sources", {})["license"] = origin.get("license", "the input")
    if "base_model" not in into and "base_model" in new:
        into["base_model"] = new["base_model"]
        into.setdefault("sources", {})["base_model"] = origin.get("base_model", "the input")


def _attempt(into: dict, what: str, read, *args) -> None:
    try:
        _merge(into, read(*args))
    except Exception as err:  # noqa: BLE001 - a card must never fail the export
        log.debug("model card: could not read %s (%s: %s)", what, type(err).__name__, err)


def input_card_fields(model_spec: str | None, gguf_file: str | None = None) -> dict:
    """``license`` (with ``license_name``/``license_link`` for ``other``) and ``base_model`` as
    the input states them, plus ``sources`` {field: where it was read}; ``{}`` when the input says
    nothing or cannot be read. Never raises.

    Sources, first found wins per field: the spec as a Hub id (base model = the spec; license
    from its model card if the Hub cache holds it), a Hub cache path (base model = that
    repository), the GGUF metadata, then the front matter of ``README.md`` next to the weights.
    """
    out: dict = {}
    try:
        spec = str(model_spec) if model_spec is not None else ""
        if not spec:
            return {}
        if is_hub_id(spec) and gguf_file is None:
            out.update(base_model=spec, sources={"base_model": "the model id"})
            readme = _cached_readme(spec)
            if readme is not None:
                _attempt(out, "the cached model card", readme_fields, readme)
            return _clean(out)
        from ..models.loading import resolve_source

        location, gguf = resolve_source(spec, gguf_file)
        folder = Path(location)
        repo = hub_cache_id(folder)
        if repo:
            out.update(base_model=repo, sources={"base_model": "the Hub cache path of the input"})
        if gguf:
            from ..models.header import gguf_metadata

            _attempt(out, "the GGUF metadata", lambda: gguf_fields(gguf_metadata(folder / gguf)))
        if (folder / "README.md").is_file():
            _attempt(out, "README.md", readme_fields, folder / "README.md")
    except Exception as err:  # noqa: BLE001 - a card must never fail the export
        log.debug("model card: input %r not readable (%s: %s)", model_spec, type(err).__name__, err)
    return _clean(out)


def _clean(out: dict) -> dict:
    return {k: v for k, v in out.items() if k in _FIELDS or k == "sources"} if out.get("sources") else {}
