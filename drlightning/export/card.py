"""The model card (``README.md``, Hugging Face conventions) of a saved model directory."""

from __future__ import annotations

from pathlib import Path

import yaml


def _is_hub_id(model: str) -> bool:
    return model.count("/") == 1 and not Path(model).expanduser().exists() and not model.startswith(".")


def _quality(results: dict) -> list[str]:
    rows = ["| | dense | pruned |", "|---|---|---|"]
    dense = results.get("dense_ppl") or {}
    for name, value in (results.get("ppl") or {}).items():
        d = dense.get(name)
        rows.append(f"| perplexity, {name} | {'-' if d is None else f'{d:.3f}'} | {value:.3f} |")
    zs, dzs = results.get("zero_shot") or {}, results.get("dense_zero_shot") or {}
    for task, row in (zs.get("tasks") or {}).items():
        d = (dzs.get("tasks") or {}).get(task, {}).get("value")
        rows.append(f"| {task} ({row['metric']}) | {'-' if d is None else f'{d:.4f}'} | "
                    f"{row['value']:.4f} |")
    return rows if len(rows) > 2 else ["(not evaluated)"]


def _loading(path: str, standard: bool) -> list[str]:
    if standard:
        return ["A standard checkpoint of the input's own architecture: no remote code, no extra "
                "tensors; it loads wherever the dense model does (transformers, lm-eval's `hf` "
                "model, converters and serving engines that accept this architecture).", "",
                "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f"model = AutoModelForCausalLM.from_pretrained({path!r})",
                f"tok = AutoTokenizer.from_pretrained({path!r})", "```"]
    return ["Each layer boundary carries one merged rotation, applied by the bundled "
            "`modeling_drlightning.py`: load with `trust_remote_code=True`, or with drlightning "
            "installed and no remote code.", "",
            "```python", "from transformers import AutoModelForCausalLM",
            f"model = AutoModelForCausalLM.from_pretrained({path!r}, trust_remote_code=True)", "",
            "import drlightning  # or: no remote code",
            f"model = drlightning.load_pretrained({path!r})", "```"]


def _recipe(rotation: dict, objective: str, steps: int) -> str:
    """The rotation settings in words: objective, role weights, R1 placement, guard."""
    where = "shared by all layers and absorbed into the weights" if rotation.get("r1") == "shared" \
        else "per layer"
    weights = ("; linears weighted by their measured pruning error"
               if rotation.get("role_weights") == "measured" else "")
    guard = ("; per layer, the identity was kept wherever it pruned better"
             if rotation.get("guard") else "")
    return f"DenoiseRotator rotations ({objective} objective, {steps} steps{weights}; R1 {where}{guard})"


def model_card(results: dict, path: str) -> str:
    """Front matter (base model, library, tags) and what the model is, how good, how to load it."""
    rotation = results.get("rotation") or {}
    export = results.get("export") or {}
    standard = not any(k.startswith("drl_") for k in export)
    pattern = str(results.get("pattern"))
    meta = {"library_name": "transformers", "pipeline_tag": "text-generation",
            "tags": ["drlightning", "denoiserotator", "pruned", f"sparsity-{pattern}"]}
    if _is_hub_id(str(results.get("model"))):
        meta["base_model"] = results["model"]
    steps = results.get("steps", 0)
    objective = rotation.get("objective", "entropy")
    if objective == "auto":
        objective = "entropy" if pattern == "none" else "pruned_mass"
    how = "the plain pruner (no rotation)" if not steps else _recipe(rotation, objective, steps)
    if rotation.get("permute"):
        how += ", with N:M channel permutations"
    notes = []
    if export.get("untied_embeddings"):
        notes.append("The input embeddings and lm_head are untied (they differ after the rotation).")
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# {Path(str(results.get('model'))).name} pruned with drlightning", "",
             f"`{results.get('model')}` pruned to **{pattern}** with **{results.get('method')}** after "
             f"{how}. Calibration: {results.get('calibration', {}).get('tokens', '?')} tokens of "
             f"`{results.get('calibration', {}).get('source', '?')}`.", "",
             "## Quality", "", *_quality(results), "", "## Loading", "", *_loading(path, standard)]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
