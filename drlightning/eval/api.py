"""One evaluation entry point: perplexity (+ zero-shot) of a model, a GGUF file or a run directory.

    drlightning eval --model runs/smollm2/sparsegpt-2of4 --eval.zero_shot [drl_continuation]
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..data import load_eval_text, tokenize_text
from ..models import DEFAULT_MODEL, load_model
from ..reporting.results import EVAL_PROTOCOL, device_name, read_json, versions, write_json
from . import perplexity
from .plan import PLAN_FIELDS, EvalPlan, change_note, shown
from .zeroshot import CONTINUATION, zero_shot

PROTOCOL_WINDOWS = {"c4": 256, "speeches": 128}
"""Evaluation windows fixed by a dataset's protocol when none are given: C4 256 × seqlen tokens,
speeches the first 128 windows (at seqlen 512: 64k tokens, three times the embedded split; the
whole text would be twenty times)."""


def protocol_windows(name: str, max_windows: int | None) -> int | None:
    """Windows evaluated on dataset ``name``: ``max_windows`` if given, else its protocol's."""
    return max_windows if max_windows is not None else PROTOCOL_WINDOWS.get(name)


def check_context(seqlen: int, context, source: str) -> None:
    """Refuse a window longer than the model's context (``source``: where the context is written)."""
    if isinstance(context, int) and isinstance(seqlen, int) and not isinstance(context, bool) \
            and seqlen > context:
        raise ValueError(f"eval.seqlen={seqlen} exceeds the model's context of {context} tokens "
                         f"({source}); allowed: 2 to {context}")


def check_finite(ppl: dict[str, float], plan: EvalPlan) -> dict[str, float]:
    """``ppl`` unchanged if every perplexity is a finite number; a NaN or infinite one is an error
    (a number that means nothing is never reported)."""
    for name, value in ppl.items():
        if not math.isfinite(value):
            raise ValueError(f"the perplexity on {name!r} came out {value} (not a finite number; "
                             f"eval.seqlen {plan.seqlen}, {shown('max_windows', plan.max_windows)} "
                             "windows): the model's logits overflow or hold NaN (an overflowing dtype "
                             "such as float16, or broken weights), so no number is reported")
    return ppl


def evaluate_loaded(model, tokenizer, plan: EvalPlan, eval_tokens: dict | None = None,
                    progress: bool = True) -> dict:
    """Perplexity and 0-shot accuracy of an in-memory model, as ``plan`` says (its ``seqlen``
    unset: 512; ``eval_tokens``: already tokenised evaluation texts by dataset name). A window
    beyond the model's context, or a perplexity that is not a finite number, is a ValueError."""
    plan = plan.resolved()
    if plan.data:
        check_context(plan.seqlen, getattr(getattr(model, "config", None), "max_position_embeddings", None),
                      "max_position_embeddings of the loaded model")
    out: dict = {"ppl": {}}
    for name in plan.data:
        tokens = (eval_tokens or {}).get(name)
        if tokens is None:
            tokens = tokenize_text(tokenizer, load_eval_text(name))
        windows = protocol_windows(name, plan.max_windows)
        out["ppl"][name] = perplexity(model, tokens, plan.seqlen, plan.batch_size, windows,
                                      progress=progress)
    check_finite(out["ppl"], plan)
    if plan.zero_shot:
        text = load_eval_text(plan.task_text) if CONTINUATION in plan.zero_shot else None
        out["zero_shot"] = zero_shot(model, tokenizer, list(plan.zero_shot),
                                     task_data_dir=plan.task_data_dir, text=text,
                                     n_items=plan.task_items, limit=plan.task_limit,
                                     batch_size=plan.batch_size)
    return out


def resolve_eval_target(spec: str) -> tuple[str, Path | None]:
    """A run directory evaluates its saved ``model/``; returns (model spec, run dir or None). A run
    directory without results.json or a saved model (unfinished, or none saved) is refused."""
    path = Path(spec)
    if (path / "results.json").is_file() and (path / "model" / "config.json").is_file():
        return str(path / "model"), path
    looks_like_run = any((path / name).exists() for name in ("results.json", "state", "config.yaml"))
    if path.is_dir() and looks_like_run and not (path / "config.json").is_file():
        if (path / "results.json").is_file():
            raise FileNotFoundError(
                f"{path} is a finished drlightning run that saved no model (run.export.save was "
                "false); to get one, re-run its fit command with --run.export.save true: it resumes "
                "from the run's state/ and saves the model without training again (the numbers "
                f"the run measured are in {path / 'results.json'})")
        raise FileNotFoundError(f"{path} is a drlightning run directory without results.json (an "
                                "unfinished run: re-run its fit command to finish it); allowed: a "
                                "finished run directory with its saved model/, a model directory "
                                "with config.json, a .gguf file or a hub id")
    return spec, None


def load_any(spec: str, gguf_file: str | None, dtype: str, trust_remote_code: bool):
    """(model, tokenizer): drlightning outputs without remote code, anything else via load_model."""
    from ..export import load_pretrained

    cfg = Path(spec) / "config.json"
    if cfg.is_file() and str(read_json(cfg, "a model config").get("model_type", "")).startswith(
            "drlightning_"):
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
    ppl = layerwise_perplexity(lw, lw.checkpoint, tokens, plan.seqlen, windows, plan.batch_size,
                               progress)
    return {"ppl": check_finite(ppl, plan)}


def recorded_plan(res: dict) -> EvalPlan | None:
    """The evaluation plan a run's results.json records: a fit's ``options.eval`` (window length
    from its ``eval.seqlen``) or a LoRA run's ``eval``; None if it records neither."""
    ev = res.get("eval") if isinstance(res.get("eval"), dict) else {}
    options = res.get("options") if isinstance(res.get("options"), dict) else {}
    saved = options.get("eval") if isinstance(options.get("eval"), dict) else (ev if "data" in ev else None)
    if saved is None:
        return None
    fields = {k: saved[k] for k in PLAN_FIELDS if k in saved}
    return EvalPlan(**{**fields, "seqlen": ev.get("seqlen") or fields.get("seqlen")})


def run_plan(run_dir: Path, layerwise: bool = False) -> EvalPlan | None:
    """The evaluation plan a finished run used (its ``options.eval``, window length resolved), so
    that ``drlightning eval <run dir>`` measures what the run measured; None if it kept none.
    ``layerwise`` (perplexity only) leaves the run's zero-shot tasks out, and says so."""
    plan = recorded_plan(read_json(run_dir / "results.json", "a drlightning run's results"))
    if plan is not None and layerwise and plan.zero_shot:
        print(f"note: the run also measured zero-shot {plan.zero_shot}; layerwise=true "
              "evaluates perplexity only (run without it, where the model fits, for the tasks)")
        plan = replace(plan, zero_shot=[])
    return plan


def plan_of(run_dir: Path | None, given: EvalPlan | None, layerwise: bool) -> EvalPlan:
    """The plan :func:`evaluate` measures: ``given`` (its seqlen unset: the run's), else the run's
    own, else the defaults; a run directory that records no plan gets a note saying so."""
    if run_dir is None:
        return (given or EvalPlan()).resolved()
    own = run_plan(run_dir, layerwise and given is None)
    plan = (given or own or EvalPlan()).resolved(own.seqlen if own else None)
    if own is None:
        print(f"note: {run_dir / 'results.json'} records no evaluation plan (options.eval); "
              f"evaluating with seqlen {plan.seqlen}, {shown('max_windows', plan.max_windows)} windows, "
              f"data {shown('data', plan.data)}")
    return plan


def cli_plan(model: str, parsed: EvalPlan | None, given: dict | None, layerwise: bool) -> EvalPlan | None:
    """The plan ``drlightning eval`` passes to :func:`evaluate`: for a run directory the run's own
    plan with only the fields the user set (``given``: field → value, from the command line or
    ``--config``) taken from ``parsed``, and a note naming what changed; else ``parsed``."""
    _, run_dir = resolve_eval_target(model)
    if run_dir is None:
        return parsed
    if parsed is None or not given:
        return None  # the run's own plan
    own = run_plan(run_dir, layerwise)
    if own is None:
        return parsed
    plan = replace(own, **{k: getattr(parsed, k) for k in given if k in PLAN_FIELDS})
    plan = replace(plan, seqlen=plan.seqlen or own.seqlen)  # seqlen null: the run's, as evaluate does
    note = change_note(own, plan)
    if note:
        print(note)
    return plan


def model_context(spec: str, gguf_file: str | None) -> tuple[int | None, str]:
    """The model's context length and where it is written, read without its weights (config.json
    of a local directory, or a GGUF header); (None, "") for a hub id."""
    cfg = Path(spec).expanduser() / "config.json"
    if gguf_file is None and cfg.is_file():
        return (read_json(cfg, "a model config").get("max_position_embeddings"),
                f"max_position_embeddings in {cfg}")
    if spec == DEFAULT_MODEL or spec.endswith(".gguf") or gguf_file is not None:
        from ..models.header import model_shape

        return model_shape(spec, gguf_file).max_position_embeddings, "context_length of the GGUF file"
    return None, ""


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
            otherwise perplexity on the embedded evaluation text in 512-token windows). On the
            command line, ``--eval.*`` changes only the fields it sets in a run's own plan; a plan
            passed from Python is measured as given (its seqlen unset: the run's). A seqlen
            beyond the model's context is refused before the weights load.
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
    plan = plan_of(run_dir, eval, layerwise)
    from .checks import check_eval_fields

    check_eval_fields(plan, "eval")
    if plan.data:
        check_context(plan.seqlen, *model_context(spec, gguf_file))  # before the weights load
    if layerwise:
        load = {"dtype": dtype, "gguf_file": gguf_file, "trust_remote_code": trust_remote_code}
        res = _evaluate_layerwise(spec, plan, load, dev, progress)
    else:
        mdl, tok = load_any(spec, gguf_file, dtype, trust_remote_code)
        mdl.to(dev)
        res = evaluate_loaded(mdl, tok, plan, progress=progress)
    res.update(model=model, eval={"seqlen": plan.seqlen, "max_windows": plan.max_windows,
                                  "datasets": list(plan.data), "protocol": EVAL_PROTOCOL},
               device=device_name(dev), versions=versions(), seconds=time.perf_counter() - start)
    target = Path(output) if output else (free_name(run_dir / "eval.json") if run_dir else None)
    if target is not None:
        write_json(target, res)
        print(f"evaluation written to {target}")
    from ..reporting.report import eval_table

    print(eval_table(res))
    return res
