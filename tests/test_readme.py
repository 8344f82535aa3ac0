"""The README's Python snippets run as written, on a tiny run saved where the README looks."""

from __future__ import annotations

import re
from pathlib import Path

from drlightning.cli import main

from .tiny import fit_args, save_tiny_dir

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The README's Python snippets, but the notebook example of drlightning.prune (it runs on the
    real embedded model: tests/test_readme_api.py, a slow test)."""
    return [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "drlightning.prune(" not in b]


def test_readme_python_snippets_run_on_a_saved_run(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "the README has no Python snippet"
    paths = set(re.findall(r'"(runs/[^"]+)/model"', "".join(blocks)))
    assert len(paths) == 1, paths
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    monkeypatch.chdir(tmp_path)
    main(fit_args(src, tmp_path / paths.pop(), steps=2))
    capsys.readouterr()
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert capsys.readouterr().out.strip(), "the generation snippet printed nothing"
    assert namespace["model"].config.model_type.startswith("drlightning_")
