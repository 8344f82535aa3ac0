"""One evaluation entry point: perplexity (+ zero-shot) of a model, a GGUF file or a run directory.

    drlightning eval --model runs/smollm2/sparsegpt-2of4 --eval.zero_shot [drl_continuation]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data import load_eval_text, tokenize_text
from ..models import DEFAULT_MODEL, load_model
from ..reporting.results import EVAL_PROTOCOL, device_name, versions, write_json
from . import perplexity
from .plan import PLAN_FIELDS, EvalPlan
from .zeroshot import CONTINUATION, zero_shot

PROTOCOL_WINDOWS = {"c4": 256, "speeches": 128}
"""Evaluation windows fixed by a dataset's protocol when none are given: C4 256 × seqlen tokens,
speeches the first 128 windows (at seqlen 512: 64k tokens, three times the embedded split; the
whole text would be twenty times)."""


def protocol_windows(name: str, max_windows: int | None) -> int | None:
    """Windows evaluated on dataset ``name``: ``max_windows`` if given, else its protocol's."""
    return max_windows if max_windows is not None else PROTOCOL_WINDOWS.get(name)


def evaluate_loaded(model, tokenizer, plan: EvalPlan, eval_tokens: dict | None = None,
                    progress: bool = True) -> dict:
    """Perplexity and 0-shot accuracy of an in-memory model, as ``plan`` says (its ``seqlen``
    unset: 512; ``eval_tokens``: already tokenised evaluation texts by dataset name)."""
    plan = plan.resolved()
    out: dict = {"ppl": {}}
    for name in plan.data:
        tokens = (eval_tokens or {}).get(name)
        if tokens is None:
            tokens = tokenize_text(tokenizer, load_eval_text(name))
        windows = protocol_windows(name, plan.max_windows)
        out["ppl"][name] = perplexity(model, tokens, plan.seqlen, plan.batch_size, windows,
                                      progress=progress)
    if plan.zero_shot:
        text = load_eval_text(plan.task_text) if CONTINUATION in plan.zero_shot else None
        out["zero_shot"] = zero_shot(model, tokenizer, list(plan.zero_shot),
                                     task_data_dir=plan.task_data_dir, text=text,
                                     n_items=plan.task_items, limit=plan.task_limit,
                                     batch_size=plan.batch_size)
    return out


def resolve_eval_target(spec: str) -> tuple[str, Path | None]:
    """A run directory evaluates its saved ``model/``; returns (model spec, run dir or None)."""
    path = Path(spec)
    if (path / "results.json").is_file() and (path / "model" / "config.json").is_file():
        return str(path / "model"), path
    return spec, None


def load_any(spec: str, gguf_file: str | None, dtype: str, trust_remote_code: bool):
    """(model, tokenizer): drlightning outputs without remote code, anything else via load_model."""
    from ..export import load_pretrained

    cfg = Path(spec) / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("model_type", "").startswith("drlightning_"):
        return load_pretrained(spec, dtype=dtype, with_tokenizer=True)
    return load_model(spec, gguf_file=gguf_file, dtype=dtype, trust_remote_code=trust_remote_code)


def _evaluate_layerwise(spec: str, plan: EvalPlan, load: dict, dev: torch.device,
                        progress: bool) -> dict:
    """Perplexity with the layers streamed from the shards (see drlightning/eval/layerwise.py);
    ``load``: how to load the model (dtype, gguf_file, trust_remote_code)."""
    from ..models.shards import LayerwiseModel
    from .layerwise import layerwise_perplexity

    if plan.zero_shot:
        raise ValueError(f"eval.zero_shot={list(plan.zero_shot)!r} needs the whole model in "
                         "memory; layerwise=true evaluates perplexity only")
    lw = LayerwiseModel(spec, device=dev, **load)
    tokens = {name: tokenize_text(lw.tokenizer, load_eval_text(name)) for name in plan.data}
    windows = {name: protocol_windows(name, plan.max_windows) for name in plan.data}
    return {"ppl": layerwise_perplexity(lw, lw.checkpoint, tokens, plan.seqlen, windows,
                                        plan.batch_size, progress)}


def run_plan(run_dir: Path, layerwise: bool = False) -> EvalPlan | None:
    """The evaluation plan a finished run used (its ``options.eval``, window length resolved), so
    that ``drlightning eval <run dir>`` measures what the run measured; None if it kept none.
    ``layerwise`` (perplexity only) leaves the run's zero-shot tasks out, and says so."""
    res = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    saved = (res.get("options") or {}).get("eval")
    if not isinstance(saved, dict):
        return None
    fields = {k: saved[k] for k in PLAN_FIELDS if k in saved}
    if layerwise and fields.get("zero_shot"):
        print(f"note: the run also measured zero-shot {fields['zero_shot']}; layerwise=true "
              "evaluates perplexity only (run without it, where the model fits, for the tasks)")
        fields["zero_shot"] = []
    return EvalPlan(**{**fields, "seqlen": (res.get("eval") or {}).get("seqlen") or fields.get("seqlen")})


def free_name(path: Path) -> Path:
    """``path`` if nothing is there yet, else the first free ``<stem>-2<suffix>``, ``-3``, …"""
    candidate, k = path, 1
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return candidate


def evaluate(
    model: str = DEFAULT_MODEL,
    eval: EvalPlan | None = None,  # the CLI's --eval.* group, named as run.eval.* in a fit
    dtype: str = "float32",
    device: str = "auto",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    output: str | None = None,
    progress: bool = True,
    layerwise: bool = False,
) -> dict:
    """Evaluate a model: perplexity on ``eval.data`` and 0-shot accuracy on ``eval.zero_shot``.

    Args:
        model: a drlightning run directory, a saved model directory, a .gguf file, a hub id, or
            "smollm2-135m-instruct" (the embedded default).
        eval: what to measure (the same plan as a fit's ``run.eval``; default: for a run
            directory, the run's own evaluation protocol — datasets, window length, windows, tasks;
            otherwise perplexity on the embedded evaluation text in 512-token windows).
        dtype: dtype to load the model in.
        device: "auto", "cpu" or "cuda[:i]".
        gguf_file: GGUF file name when ``model`` is a folder holding one.
        trust_remote_code: allow remote modelling code of a hub model.
        output: JSON file for the numbers (written over if it exists; default for a run directory:
            <run dir>/eval.json, or eval-2.json, eval-3.json, … next to it: never over an earlier one).
        progress: show progress bars.
        layerwise: stream the decoder layers from the safetensors shards one at a time
            (perplexity only; for models larger than memory).
    """
    start = time.perf_counter()
    spec, run_dir = resolve_eval_target(model)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    plan = (eval or (run_plan(run_dir, layerwise) if run_dir else None) or EvalPlan()).resolved()
    if layerwise:
        load = {"dtype": dtype, "gguf_file": gguf_file, "trust_remote_code": trust_remote_code}
        res = _evaluate_layerwise(spec, plan, load, dev, progress)
    else:
        mdl, tok = load_any(spec, gguf_file, dtype, trust_remote_code)
        mdl.to(dev)
        res = evaluate_loaded(mdl, tok, plan, progress=progress)
    res.update(model=model, eval={"seqlen": plan.seqlen, "max_windows": plan.max_windows,
                                  "protocol": EVAL_PROTOCOL},
               device=device_name(dev), versions=versions(), seconds=time.perf_counter() - start)
    target = Path(output) if output else (free_name(run_dir / "eval.json") if run_dir else None)
    if target is not None:
        write_json(target, res)
        print(f"evaluation written to {target}")
    from ..reporting.report import eval_table

    print(eval_table(res))
    return res
