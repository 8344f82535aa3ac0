"""The supported and refused model families, as the README's table, from the adapters themselves.

    python benchmarks/families.py          # writes README.md's "families" block
    python benchmarks/families.py check    # exit 1 if the README shows anything else

Rows come from ``drlightning.models.adapters.ADAPTERS`` (name, model_type, notes) and
``drlightning.models.families.UNSUPPORTED``; "tested on" says which checks each family passes in
the test suite (every family with an adapter is one of tests/tiny.py's tiny random configs).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from docblock import read_block, write_block  # noqa: E402

from drlightning.models.adapters import ADAPTERS  # noqa: E402
from drlightning.models.families import UNSUPPORTED  # noqa: E402

FAMILY = {"llama": "Llama 2/3, SmolLM2, …", "qwen2": "Qwen2, Qwen2.5", "mistral": "Mistral",
          "qwen3": "Qwen3 (dense)", "phi3": "Phi-3, Phi-3.5, Phi-4", "mixtral": "Mixtral",
          "qwen3_moe": "Qwen3-MoE"}
"""The families each adapter's ``model_type`` covers, in words."""

TINY = ("Every family in the table passes the same checks on a tiny random model of its "
        "architecture (tests/tiny.py): random rotations and whole rotate-only runs keep float64 "
        "logits within 1e-9 of the dense model (per-layer and shared R1); a 2:4 run keeps the exact "
        "pattern in every saved weight (each part of a fused one, every expert); 0 rotation steps "
        "reproduce the plain pruner exactly; saved outputs reload (shared R1 with plain "
        "transformers). Dense families also: channel permutations are exact (float64). MoE "
        "families also: per-expert Hessians equal a slow reference, the router stays dense, an "
        "expert no calibration token reaches is pruned by magnitude. No real MoE, Qwen3 or Phi-3 "
        "checkpoint could be tried here (no Hub access): quality on them is unmeasured.")
REAL = {"llama": "tiny random model; SmolLM2-135M-Instruct (the quality tables, the demo)"}


def render() -> str:
    """The README block: one row per adapter, then the refused families in one line each."""
    rows = ["| family | `model_type` | how it is rotated | tested on |", "|---|---|---|---|"]
    for a in ADAPTERS:
        how = a.notes or "standard pre-norm layer: R1 on the residual stream, R2 on v/o"
        rows.append(f"| {FAMILY.get(a.name, a.name)} | {', '.join(a.model_types)} | {how} | "
                    f"{REAL.get(a.name, 'tiny random model')} |")
    reasons: dict[str, list[str]] = {}
    for model_type, (family, why) in UNSUPPORTED.items():
        reasons.setdefault(why, []).append(f"{family} (`{model_type}`)")
    refused = [f"- {', '.join(names)}: it {why}." for why, names in reasons.items()]
    return "\n".join([*rows, "", TINY, "", "Refused at pre-flight with one line (before any weights load):",
                      *refused])


def main() -> None:
    readme = ROOT / "README.md"
    if sys.argv[1:] == ["check"]:
        same = read_block(readme, "families") == render()
        print("README families table matches the adapters" if same else
              "README families table is stale: run python benchmarks/families.py")
        raise SystemExit(0 if same else 1)
    write_block(readme, "families", "Supported model families", render())
    print(f"wrote the families block of {readme}")


if __name__ == "__main__":
    main()
