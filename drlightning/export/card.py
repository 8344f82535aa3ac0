"""The model card (``README.md``) of a saved model directory, written the Hub way.

``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData` renders the YAML front matter
(library, tags, pipeline, base model and license when the input states them, the calibration
dataset when it is a Hub dataset, and ``model-index`` with the run's rounded perplexities and
zero-shot accuracies on Hub datasets); the body says what was done, how good it is against the
dense model, how to load it and with which versions. No local path is written (:mod:`.card_names`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .card_inputs import input_card_fields
from .card_names import SOURCES, hub_dataset, rounded, shown_model, shown_source, source_words

__all__ = ["card_data", "eval_results", "input_card_fields", "model_card"]

log = logging.getLogger(__name__)

PAPER = "https://arxiv.org/abs/2505.23049"
HUB_PATH = ("The model directory is named by its folder name here; once uploaded to the Hub, give "
            "its repository id.")
METRIC_NAMES = {"acc": "accuracy", "acc_norm": "normalized accuracy"}


def _ppl_result(name: str, value: float, eval_cfg: dict) -> dict | None:
    """A perplexity for ``model-index``; ``None`` for text that is no Hub dataset (embedded text,
    local files): those are in the card's table only."""
    source = str(name)
    if source in SOURCES:
        label, dataset, config, split, _ = SOURCES[source]
    elif source.startswith("hf:"):
        dataset, _, config = source[3:].partition(":")
        label, split, config = dataset, None, config or None
    else:
        dataset = None
    if not dataset:
        return None
    args = {"seqlen": eval_cfg["seqlen"]} if eval_cfg.get("seqlen") else {}
    if eval_cfg.get("max_windows"):
        args["max_windows"] = eval_cfg["max_windows"]
    return {"task_type": "text-generation", "task_name": "Text Generation",
            "dataset_type": dataset, "dataset_name": label, "dataset_config": config,
            "dataset_split": split, "metric_type": "perplexity", "metric_name": "perplexity",
            "metric_value": rounded("perplexity", value), "metric_args": args or None}


def _task_dataset(task: str) -> tuple[str | None, str | None]:
    """(Hub dataset, config) an lm-eval task reads, from its YAML; (None, None) if unknown."""
    try:
        from ..eval.task_index import task_dataset, task_files

        dataset = task_dataset(task)
        path = task_files().get(task)
        found = re.search(r"^dataset_name:\s*['\"]?([^'\"\s#]+)", path.read_text(encoding="utf-8"),
                          re.M) if path is not None else None
        return dataset, (found.group(1) if found and found.group(1) != "null" else None)
    except Exception as err:  # noqa: BLE001 - lm-eval missing or changed: the task name will do
        log.debug("model card: no dataset for task %r (%s)", task, err)
        return None, None


def _accuracy_result(task: str, row: dict) -> dict | None:
    """A zero-shot accuracy for ``model-index``; ``None`` when the task's Hub dataset is unknown."""
    dataset, config = _task_dataset(task)
    if not dataset:
        return None
    metric = str(row.get("metric", "acc"))
    return {"task_type": "text-generation", "task_name": "Text Generation",
            "dataset_type": dataset, "dataset_name": f"{task} (0-shot)",
            "dataset_config": config, "dataset_args": {"num_few_shot": 0},
            "metric_type": metric, "metric_name": METRIC_NAMES.get(metric, metric),
            "metric_value": rounded(metric, row["value"])}


def eval_results(results: dict) -> list:
    """``EvalResult`` s of the model: one per perplexity on a Hub dataset, one per zero-shot task
    whose Hub dataset lm-eval names; values rounded (:func:`~.card_names.rounded`)."""
    from huggingface_hub import EvalResult

    rows = [_ppl_result(name, value, results.get("eval") or {})
            for name, value in (results.get("ppl") or {}).items() if value is not None]
    rows += [_accuracy_result(task, row)
             for task, row in ((results.get("zero_shot") or {}).get("tasks") or {}).items()
             if isinstance(row, dict) and row.get("value") is not None]
    return [EvalResult(**{k: v for k, v in row.items() if v is not None}) for row in rows if row]


def _pruned(results: dict) -> bool:
    return str(results.get("pattern")) != "none"


def _model_name(results: dict) -> str:
    name = shown_model(results.get("model"))
    if not _pruned(results):
        return f"{name} rotated with drlightning"
    return f"{name} pruned to {results.get('pattern')} with {results.get('method')} (drlightning)"


def _standard(export: dict) -> bool:
    return export.get("r1") == "shared" or not any(k.startswith("drl_") for k in export)


def card_data(results: dict, inputs: dict | None = None):
    """The front matter as :class:`~huggingface_hub.ModelCardData` (``inputs``: license and
    base model of the input, :func:`input_card_fields` of the run's model when ``None``)."""
    from huggingface_hub import ModelCardData

    if inputs is None:
        inputs = input_card_fields(results.get("model"), (results.get("options") or {}).get("gguf_file"))
    pattern, method = str(results.get("pattern")), str(results.get("method"))
    tags = ["drlightning", "denoiserotator"]
    if _pruned(results):
        tags += ["pruning", "pruned", "sparsity", f"sparsity-{pattern}", method]
    else:
        tags.append("rotation")
    if not _standard(results.get("export") or {}):
        tags.append("custom_code")
    source = str((results.get("calibration") or {}).get("source", ""))
    dataset = hub_dataset(source) if source else None
    return ModelCardData(
        library_name="transformers", pipeline_tag="text-generation", tags=tags,
        base_model=inputs.get("base_model"), license=inputs.get("license"),
        license_name=inputs.get("license_name"), license_link=inputs.get("license_link"),
        datasets=[dataset] if dataset else None, model_name=_model_name(results),
        eval_results=eval_results(results) or None)


def _quality(results: dict) -> list[str]:
    rows = [f"| | dense | {'pruned' if _pruned(results) else 'rotated'} |", "|---|---|---|"]
    dense = results.get("dense_ppl") or {}
    for name, value in (results.get("ppl") or {}).items():
        d = dense.get(name)
        dense_cell = "-" if d is None else f"{d:.3f}"
        rows.append(f"| perplexity, {shown_source(name)} | {dense_cell} | {value:.3f} |")
    zs, dzs = results.get("zero_shot") or {}, results.get("dense_zero_shot") or {}
    for task, row in (zs.get("tasks") or {}).items():
        d = (dzs.get("tasks") or {}).get(task, {}).get("value")
        rows.append(f"| {task} ({row['metric']}) | {'-' if d is None else f'{d:.4f}'} | "
                    f"{row['value']:.4f} |")
    if zs.get("mean") is not None and len(zs.get("tasks") or {}) > 1:
        same = set(dzs.get("tasks") or {}) == set(zs.get("tasks") or {})
        d = dzs.get("mean") if same else None
        rows.append(f"| zero-shot mean | {'-' if d is None else f'{d:.4f}'} | {zs['mean']:.4f} |")
    if len(rows) == 2:
        return ["(not evaluated)"]
    ev = results.get("eval") or {}
    windows = f" (at most {ev['max_windows']} windows)" if ev.get("max_windows") else ""
    how = [f"Perplexity: non-overlapping windows of {ev['seqlen']} tokens over the evaluation "
           f"text{windows}, exp(mean token NLL)." if ev.get("seqlen") else "",
           "Zero-shot: lm-eval, 0-shot." if zs.get("tasks") else ""]
    return rows + ["", " ".join(h for h in how if h)] if any(how) else rows


def _loading(path: str, standard: bool) -> list[str]:
    if standard:
        return ["A standard checkpoint of the input's own architecture: no remote code, no extra "
                "tensors; it loads wherever the dense model does (transformers, lm-eval's `hf` "
                "model, converters and serving engines that accept this architecture).", "",
                "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f"model = AutoModelForCausalLM.from_pretrained({path!r})",
                f"tok = AutoTokenizer.from_pretrained({path!r})", "```", "", HUB_PATH]
    return ["Each layer boundary carries one merged rotation, applied by the bundled "
            "`modeling_drlightning.py`: load with `trust_remote_code=True`, or with drlightning "
            "installed and no remote code.", "",
            "```python", "from transformers import AutoModelForCausalLM",
            f"model = AutoModelForCausalLM.from_pretrained({path!r}, trust_remote_code=True)", "",
            "import drlightning  # or: no remote code",
            f"model = drlightning.load_pretrained({path!r})", "```", "", HUB_PATH]


def _recipe(rotation: dict, objective: str, steps: int) -> str:
    """The rotation settings in words: objective, role weights, R1 placement, guard."""
    where = "shared by all layers and absorbed into the weights" if rotation.get("r1") == "shared" \
        else "per layer"
    weights = ("; linears weighted by their measured pruning error"
               if rotation.get("role_weights") == "measured" else "")
    guard = ("; per layer, the identity was kept wherever it pruned better"
             if rotation.get("guard") else "")
    return f"DenoiseRotator rotations ({objective} objective, {steps} steps{weights}; R1 {where}{guard})"


def _gguf_name(results: dict) -> str | None:
    try:
        from ..models.loading import resolve_source

        return resolve_source(str(results.get("model")), (results.get("options") or {}).get("gguf_file"))[1]
    except Exception:  # noqa: BLE001 - only a detail of the card
        return None


def _input_lines(results: dict, inputs: dict) -> list[str]:
    """Where the model came from: base model and license, and where the card read them."""
    sources = inputs.get("sources") or {}
    gguf = _gguf_name(results)
    lines = [f"- Input: `{shown_model(results.get('model'))}`"
             + (f" (GGUF file `{gguf}`, dequantized when loaded)" if gguf else "")]
    base = inputs.get("base_model")
    if base:
        names = ", ".join(f"`{b}`" for b in ([base] if isinstance(base, str) else base))
        lines.append(f"- Base model: {names} (from {sources.get('base_model', 'the input')})")
    lic = inputs.get("license")
    if lic:
        extra = ", ".join(f"{k}: {inputs[k]}" for k in ("license_name", "license_link") if inputs.get(k))
        lines.append(f"- License: `{lic}`{f' ({extra})' if extra else ''}, as stated by "
                     f"{sources.get('license', 'the input')}; the pruned weights are derived from "
                     "the input's and follow its license.")
    else:
        lines.append("- License: the input states none that drlightning could read; the pruned "
                     "weights are derived from the input's and follow its license.")
    return lines


def _method_lines(results: dict) -> list[str]:
    rotation = results.get("rotation") or {}
    pattern = str(results.get("pattern"))
    steps = results.get("steps", 0)
    objective = rotation.get("objective", "entropy")
    if objective == "auto":
        objective = "entropy" if pattern == "none" else "pruned_mass"
    how = _recipe(rotation, objective, steps) if steps else ""
    permute = ", with N:M channel permutations" if rotation.get("permute") else ""
    cal = results.get("calibration") or {}
    source = str(cal.get("source", "?"))
    pruned = f"pruned to **{pattern}** with **{results.get('method')}**"
    if not _pruned(results):
        what = f"rotated with {how or 'no rotation'}{permute}, not pruned (pattern `none`)"
    else:
        what = f"{pruned} after {how}{permute}" if how else \
            f"{pruned} by the plain pruner (no rotation){permute}"
    windows = (f" ({cal['nsamples']} windows of {cal['seqlen']} tokens, seed {cal.get('seed')})"
               if cal.get("nsamples") and cal.get("seqlen") else "")
    lines = [f"`{shown_model(results.get('model'))}` {what}. Calibration: {cal.get('tokens', '?')} "
             f"tokens of `{shown_source(source)}`{windows}: {source_words(source, 'calibration')}."]
    if steps:
        lines += ["", f"[DenoiseRotator]({PAPER}) learns orthogonal rotations of the hidden states "
                  "that concentrate the weights' importance on fewer weights, so that pruning "
                  "removes less of it; in the dense model the rotations cancel out."]
    return lines


def _software(results: dict) -> list[str]:
    versions = results.get("versions") or {}
    own = versions.get("drlightning")
    named = [f"{k} {v}" for k, v in versions.items()
             if k != "drlightning" and v and v != "not installed"]
    return [f"Made with drlightning{f' {own}' if own else ''}"
            + (f" ({', '.join(named)})." if named else ".")]


def model_card(results: dict, path: str) -> str:
    """The ``README.md`` of the saved model: Hub front matter (:func:`card_data`) and what the
    model is, how good, how to load it. ``results``: the run's results.json content."""
    from huggingface_hub import ModelCard

    inputs = input_card_fields(results.get("model"), (results.get("options") or {}).get("gguf_file"))
    data = card_data(results, inputs)
    export = results.get("export") or {}
    notes = []
    if export.get("untied_embeddings"):
        notes.append("The input embeddings and lm_head are untied (they differ after the rotation).")
    body = [f"# {_model_name(results)}", "", *_method_lines(results), "", *_input_lines(results, inputs),
            "", "## Quality", "", *_quality(results), "", "## Loading", "",
            *_loading(Path(path).name, _standard(export)), *([""] + notes if notes else []), "",
            "## Software", "", *_software(results)]
    card = ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body) + "\n")
    return str(card)
