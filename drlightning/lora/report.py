"""report.md of a LoRA recovery run: dense → pruned → pruned + LoRA (adapters, merged)."""

from __future__ import annotations

import json

from ..reporting.report import _fmt, _rows


def lora_report(res: dict) -> str:
    """Markdown table of the stages and the training/evaluation protocol."""
    src = res.get("source_run") or {}
    same_eval = (src.get("eval") or {}).get("seqlen") == (res.get("eval") or {}).get("seqlen")
    stages = [("dense", _rows(src, True) if src and same_eval else {}),
              ("pruned", _rows(res.get("before") or {}, False)),
              ("+ LoRA (adapters)", _rows(res.get("after_adapter") or {}, False))]
    if res.get("after"):
        stages.append(("+ LoRA merged (sparse)", _rows(res["after"], False)))
    labels: dict[str, bool] = {}
    for _, rows in stages[1:]:
        labels.update({k: acc for k, (_, acc) in rows.items()})
    title = (f"# LoRA recovery of {res['model']} — r {res['lora']['r']}, "
             f"{res['steps']} steps\n")
    lines = [title, "| metric | " + " | ".join(s for s, _ in stages) + " |",
             "|---" * (len(stages) + 1) + "|"]
    for label, acc in labels.items():
        cells = [_fmt(rows.get(label, (None, acc))[0], acc) for _, rows in stages]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sp = res.get("sparsity")
    masked = (res.get("lora") or {}).get("mask_updates")
    lines += ["", "Accuracies in %, perplexities lower-is-better. The adapters column is the "
              "unmerged model " + ("(trained update M ⊙ BA, already sparse)" if masked else
                                   "(its plain LoRA update BA is dense)")
              + "; the merged column keeps the pruning mask (W ← M ⊙ (W + BA)) and is what "
              "`model/` holds."]
    if sp:
        lines.append(f"Merged sparsity: {100 * sp['pruned_fraction']:.2f}% zeros in {sp['linears']} "
                     f"linears (mask {100 * sp['mask_pruned_fraction']:.2f}%), "
                     f"{sp['nonzero_at_pruned_positions']} non-zeros at pruned positions.")
    lines += ["", "## Protocol", "", "```json",
              json.dumps({"lora": res.get("lora"), "data": res.get("data"), "eval": res.get("eval"),
                          "best_checkpoint": res.get("best_checkpoint"), "device": res.get("device"),
                          "versions": res.get("versions")}, indent=2, default=str), "```", ""]
    return "\n".join(lines)
