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


def _stage_table(res: dict, stages: tuple[tuple[str, str], ...]) -> list[str]:
    """Markdown rows of perplexities (3 decimals) and accuracies (4) of the named stages."""
    from ..export.card_names import shown_source

    got = [(label, res.get(key) or {}) for label, key in stages]
    rows = [f"| | {' | '.join(label for label, _ in got)} |", "|---" * (len(got) + 1) + "|"]
    names = dict.fromkeys(n for _, r in got for n in (r.get("ppl") or {}))
    for name in names:
        cells = [(r.get("ppl") or {}).get(name) for _, r in got]
        rows.append(f"| perplexity, {shown_source(name)} | "
                    + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    tasks = dict.fromkeys(t for _, r in got for t in ((r.get("zero_shot") or {}).get("tasks") or {}))
    for task in tasks:
        cells = [((r.get("zero_shot") or {}).get("tasks") or {}).get(task) or {} for _, r in got]
        metric = next((c["metric"] for c in cells if c.get("metric")), "acc")
        rows.append(f"| {task} ({metric}) | " + " | ".join(
            "-" if c.get("value") is None else f"{c['value']:.4f}" for c in cells) + " |")
    return rows if len(rows) > 2 else ["(not evaluated)"]


def _origin(res: dict) -> tuple[str, str, dict]:
    """(the run LoRA started from, the pruned model in words, its input's license/base model)."""
    from ..export.card import input_card_fields
    from ..export.card_names import shown_model

    src = res.get("source_run") or {}
    run = shown_model(res.get("model"))
    if not src:
        return run, f"`{run}`", input_card_fields(res.get("model"))
    dense = shown_model(src.get("model"))
    what = (f"`{dense}` pruned to {src.get('pattern')} with {src.get('method')} by drlightning"
            if str(src.get("pattern")) != "none" else f"`{dense}` rotated by drlightning")
    return run, what, input_card_fields(src.get("model"), (src.get("options") or {}).get("gguf_file"))


def _recovery(res: dict) -> str:
    """The LoRA settings and the recovery data in words."""
    from ..export.card_names import shown_source, source_words

    lora, data = res.get("lora") or {}, res.get("data") or {}
    source = str(data.get("source", "?"))
    windows = f", {data['train_windows']} training windows" if data.get("train_windows") else ""
    return (f"rank {lora.get('r')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, "
            f"{res.get('steps')} steps on `{shown_source(source)}`: {source_words(source, 'calibration')} "
            f"({data.get('seqlen')}-token windows{windows}; the evaluation text was not trained on)")


def _front(res: dict, library: str, tags: list[str], base: dict, evals: dict | None) -> str:
    from huggingface_hub import ModelCardData

    from ..export.card import eval_results
    from ..export.card_names import hub_dataset

    dataset = hub_dataset((res.get("data") or {}).get("source", ""))
    data = ModelCardData(library_name=library, pipeline_tag="text-generation", tags=tags,
                         base_model=base.get("base_model"), license=base.get("license"),
                         license_name=base.get("license_name"), license_link=base.get("license_link"),
                         datasets=[dataset] if dataset else None,
                         model_name=evals.pop("name") if evals else None,
                         eval_results=(eval_results(evals) or None) if evals else None)
    return "---\n" + data.to_yaml() + "\n---\n\n"


def lora_model_card(res: dict, path: str) -> str:
    """README.md of the merged model (``model/``): where it came from, the recovery, the quality."""
    from pathlib import Path

    run, what, base = _origin(res)
    folder = Path(path).name
    name = f"{run} + LoRA recovery (drlightning)"
    from ..export.card import _standard

    src = res.get("source_run") or {}
    tags = ["drlightning", "denoiserotator", "lora", "pruned", "sparsity"]
    tags += [f"sparsity-{src['pattern']}"] if src.get("pattern") not in (None, "none") else []
    tags += [] if _standard(src.get("export") or {}) else ["custom_code"]
    evals = {"name": name, **(res.get("after") or {}), "eval": res.get("eval") or {}}
    body = [f"# {name}", "", f"The pruned model of run `{run}` ({what}) after LoRA recovery: "
            f"{_recovery(res)}. The adapters were merged as W ← M ⊙ (W + BA): every pruned weight "
            "stays zero.", "", f"- Base model: {_base_words(base)}", "", "## Quality", "",
            *_stage_table(res, (("pruned", "before"), ("+ LoRA (adapters)", "after_adapter"),
                                ("+ LoRA merged", "after"))),
            "", "## Loading", "", "```python", "import drlightning",
            f"model = drlightning.load_pretrained({folder!r})  # or AutoModelForCausalLM with "
            "trust_remote_code=True", "```", "",
            "The model is given by its folder name here; once uploaded, give its Hub repository id."]
    return _front(res, "transformers", tags, base, evals) + "\n".join(body) + "\n"


def _base_words(base: dict) -> str:
    bases = base.get("base_model")
    if not bases:
        return "the input of the pruned run states none that drlightning could read."
    where = (base.get("sources") or {}).get("base_model", "the input")
    return ", ".join(f"`{b}`" for b in ([bases] if isinstance(bases, str) else bases)) + \
        f" (from {where} of the pruned run)."


def adapter_card(res: dict) -> str:
    """README.md of the unmerged peft adapters (``adapter/``), replacing peft's blank template."""
    run, what, _ = _origin(res)
    lora = res.get("lora") or {}
    masked = lora.get("mask_updates")
    targets = ", ".join(lora.get("target_modules") or ["the default (every linear peft wraps)"])
    body = [f"# LoRA adapters for {run} (drlightning)", "",
            f"LoRA adapters (peft) of the pruned model of run `{run}` ({what}): {_recovery(res)}. "
            f"Targets: {targets}. They apply to that pruned model only (its `model/` folder), "
            "not to the dense model.", "", "## Quality", "",
            *_stage_table(res, (("pruned", "before"), ("+ LoRA (adapters)", "after_adapter"))),
            "", "## Loading", "", "```python", "import drlightning", "from peft import PeftModel",
            f"base = drlightning.load_pretrained('{run}/model')",
            "model = PeftModel.from_pretrained(base, 'adapter')"]
    if masked:
        body += ["from drlightning.lora.module import mask_lora_updates",
                 "mask_lora_updates(model)  # trained as M ⊙ BA: plain peft would add the dense BA"]
    body += ["```", "", "The merged, still sparse model is the run's `model/` folder."]
    return _front(res, "peft", ["drlightning", "lora", "peft", "pruned"], {}, None) \
        + "\n".join(body) + "\n"
