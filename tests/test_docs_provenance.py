"""Every results table in README and docs/benchmarks.md is generated: it sits in a marked block
that names the script writing it, and no table stands outside such a block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- ([\w.-]+):begin -->\n(.*?)\n<!-- \1:end -->", flags=re.S)
COMMAND = re.compile(r"python ((?:benchmarks|studies)/\w+\.py)")


def blocks(text: str) -> list[tuple[str, str]]:
    return BLOCK.findall(text)


@pytest.mark.parametrize("doc", ["README.md", "docs/benchmarks.md"])
def test_no_table_stands_outside_a_generated_block(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert blocks(text), f"{doc} has no generated block"
    outside = BLOCK.sub("", text)
    rows = [line for line in outside.splitlines() if re.match(r"\|\s*-{3,}", line)]
    assert not rows, f"{doc}: a table outside the generated blocks (write it from records): {rows}"
    assert text.count(":begin -->") == text.count(":end -->") == len(blocks(text))


def test_every_block_names_the_script_that_writes_it():
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    for name, body in blocks(text):
        scripts = COMMAND.findall(body)
        assert scripts, f"block {name!r} does not name the command that writes it"
        source = (ROOT / scripts[0]).read_text(encoding="utf-8")
        assert "write_block(" in source or "publish(" in source, f"{scripts[0]} writes no block"
        assert name.split("-")[0] in source, f"{scripts[0]} does not write a block named like {name!r}"


def test_a_hand_written_table_is_found():
    text = "intro\n<!-- x:begin -->\n| a |\n|---|\n<!-- x:end -->\n| b |\n|---|\n"
    assert [r for r in BLOCK.sub("", text).splitlines() if re.match(r"\|\s*-{3,}", r)] == ["|---|"]
