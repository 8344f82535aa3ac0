"""The Python API: ``drlightning.prune(model, …)`` — rotate and prune a model from a notebook.

    import drlightning
    result = drlightning.prune("smollm2-135m-instruct", method="wanda", pattern="2:4", steps=20)
    result.model          # the pruned model, in memory (rotations merged; ready to generate)
    result.dense_ppl, result.ppl, result.report["layers"]   # perplexities, per-layer errors

The same run as ``drlightning fit`` (the CLI is a thin layer over the same ``run_job``), with
values instead of a config file: no run directory is kept unless ``output_dir`` is given (then it
holds what a ``fit`` run directory holds, the saved model included, and a re-run resumes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from .eval.plan import EvalPlan
from .lightning.rotation_settings import RotationSettings
from .pipeline.options import EvalOptions, ExportOptions, MonitorOptions, RunOptions

RUN_OPTIONS = ("device", "dtype", "progress", "tensorboard")
"""``prune`` keywords that shape the run rather than the rotations."""


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` returns: the pruned ``model`` and its ``tokenizer`` (in memory), and
    the run's ``report`` (results.json's content: perplexities, per-layer errors, settings)."""

    model: object
    tokenizer: object
    report: dict

    @property
    def ppl(self) -> dict[str, float]:
        """Perplexity of the pruned model per evaluation dataset."""
        return self.report.get("ppl") or {}

    @property
    def dense_ppl(self) -> dict[str, float]:
        """Perplexity of the dense model per evaluation dataset (measured before pruning)."""
        return self.report.get("dense_ppl") or {}


def calibration_source(calibration, work: Path, text_field: str = "text") -> tuple[str, str | None]:
    """(``data.source``, label) for ``calibration``: a named source or a path as it is (no
    label); a list of strings or a ``datasets.Dataset`` (its ``text_field`` column) written to a
    JSONL file in ``work``, labelled by its content (so the same texts resume the same run)."""
    if isinstance(calibration, str | Path):
        return str(calibration), None
    if hasattr(calibration, "column_names"):  # a datasets.Dataset
        if text_field not in calibration.column_names:
            raise ValueError(f"calibration dataset has no {text_field!r} column; columns: "
                             f"{calibration.column_names}")
        calibration = calibration[text_field]
    texts = list(calibration)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("calibration must be a named source ('embedded', 'c4', 'wikitext2', "
                         "'hf:<id>'), a path, a datasets.Dataset or a non-empty list of strings")
    path = work / "calibration.jsonl"
    body = "".join(json.dumps({text_field: t}) + "\n" for t in texts)
    path.write_text(body, encoding="utf-8")
    digest = hashlib.blake2b(body.encode(), digest_size=8).hexdigest()
    return str(path), f"{len(texts)} texts given to prune() (digest {digest})"


def split_options(options: dict) -> tuple[dict, dict]:
    """``prune``'s extra keywords → (rotation settings, run settings); unknown ones are refused."""
    names = set(RotationSettings.names()) - {"method", "pattern", "steps"}
    unknown = sorted(set(options) - names - set(RUN_OPTIONS) - {"eval"})
    if unknown:
        raise TypeError(f"prune() got unknown options {unknown}; allowed: {sorted(names)}, "
                        f"{list(RUN_OPTIONS)} and eval")
    return ({k: v for k, v in options.items() if k in names},
            {k: v for k, v in options.items() if k not in names})


def run_options(model, output_dir: Path, run: dict, saving: bool) -> RunOptions:
    """The run's options for a loaded ``model``: evaluation (``eval``: an EvalPlan, True for the
    default, False for none), its own device and dtype, export only with an ``output_dir``,
    TensorBoard off unless asked."""
    plan = run.get("eval", True)
    if plan is True:
        ev = EvalOptions()
    elif plan is False or plan is None:
        ev = EvalOptions(data=[], dense=False)
    elif isinstance(plan, EvalPlan):
        ev = EvalOptions(**plan.protocol())  # the plan's fields, as run.eval
    else:
        raise TypeError(f"eval={plan!r}; allowed: True, False or an EvalPlan")
    param = next(model.parameters())
    return RunOptions(model=getattr(model.config, "name_or_path", "") or "in-memory",
                      dtype=str(param.dtype).removeprefix("torch."),
                      device=run.get("device", str(param.device)), output_dir=str(output_dir),
                      eval=ev, export=ExportOptions(save=saving),
                      monitor=MonitorOptions(tensorboard=run.get("tensorboard", False),
                                             progress=run.get("progress", True), picture_layers=[]))


def prune(model, tokenizer=None, *, method: str = "sparsegpt", pattern: str = "2:4",
          calibration="embedded", nsamples: int = 32, seqlen: int = 512, steps: int = 50,
          held_out: int | None = None, judge: bool = False, output_dir: str | Path | None = None,
          **options) -> PruneResult:
    """Rotate and prune ``model``; returns the pruned model and the report.

    Args:
        model: a model id or path (as ``run.model``: "smollm2-135m-instruct", a .gguf file, a
            local Hugging Face directory, a hub id) or an already loaded ``PreTrainedModel`` (on
            the CPU or a GPU; pruned in place) — then pass its ``tokenizer``.
        tokenizer: the model's tokenizer (loaded with the model when ``model`` is a name).
        method, pattern, steps: the pruner, the pattern ("2:4", "4:8", "50%") and the rotation
            steps per layer (0: the plain pruner).
        calibration: "embedded", "c4", "wikitext2", "hf:<id>", a path, a ``datasets.Dataset``
            (its "text" column) or a list of strings; ``nsamples`` windows of ``seqlen`` tokens.
        held_out: extra calibration windows no fit sees (``data.held_out``): the guard and the
            judge decide on them. None: a quarter of ``nsamples`` (8 at the default 32, as the
            configs); 0: none (the guard then decides on the fitted windows).
        judge: also run the plain pruner and return whichever finished model is better on the
            held-out windows (``run.judge``; needs ``held_out`` or ``holdout``). A loaded model
            is copied once for the plain run (twice its memory while both exist).
        output_dir: keep a run directory there (results.json, report.md, the saved model; a
            re-run resumes); None: nothing is written but the report.
        options: any other rotation setting (objective, guard, permute, role_weights, r1, …), and
            ``eval`` (True: perplexity on the embedded evaluation text before and after; False:
            none; or an :class:`~drlightning.eval.plan.EvalPlan`), ``device``, ``dtype`` (for a
            model given by name), ``progress``, ``tensorboard``.
    """
    from .lightning.calibration import CalibrationDataModule
    from .lightning.rotation_module import RotationModule
    from .models import load_model
    from .pipeline.baselines import PLAIN, run_with_plain_baseline
    from .pipeline.preflight import check_calibration_text
    from .pipeline.setup import check_options

    held_out = nsamples // 4 if held_out is None else held_out
    rotation, run = split_options(options)
    settings = RotationSettings(method=method, pattern=pattern, steps=steps, **rotation)
    if not isinstance(model, str | Path) and tokenizer is None:
        raise ValueError("prune(model=<a loaded model>) needs its tokenizer: prune(model, tokenizer)")
    with tempfile.TemporaryDirectory(prefix="drl-prune-") as tmp:
        work = Path(tmp)
        source, label = calibration_source(calibration, work)
        data = CalibrationDataModule(source=source, nsamples=nsamples, seqlen=seqlen,
                                     held_out=held_out)
        data.source_label = label
        check_calibration_text(data)  # before the model loads
        if isinstance(model, str | Path):
            model, own = load_model(str(model), dtype=run.get("dtype", "float32"))
            tokenizer = tokenizer or own
        out = Path(output_dir) if output_dir is not None else work / "run"
        opts = replace(run_options(model, out, run, saving=output_dir is not None), judge=judge)
        check_options(opts, settings, held_out)  # a refused judge copies nothing
        plain = (copy.deepcopy(model), tokenizer) if judge else None
        report = run_with_plain_baseline(RotationModule.from_settings(settings), data, opts,
                                         loaded=(model, tokenizer), plain_loaded=plain,
                                         settings={"api": "drlightning.prune"})
    if plain is not None and report["judge"]["kept"] == PLAIN:
        model = plain[0]
    return PruneResult(model, tokenizer, report)
