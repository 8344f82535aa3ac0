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
import re
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


def calibration_source(calibration, work: Path, text_field: str = "text",
                       chat: bool = False) -> tuple[str, str | None]:
    """(``data.source``, label) for ``calibration``: a named source or a path as it is (no
    label); a list of strings, of conversations (``chat``) or a ``datasets.Dataset`` (its
    ``text_field`` column, or "messages" with ``chat``) written to ``work/calibration.jsonl``
    ("text" or "messages" lines), labelled by its content (so the same texts resume the run)."""
    if isinstance(calibration, str | Path):
        return str(calibration), None
    if hasattr(calibration, "column_names"):  # a datasets.Dataset
        column = "messages" if chat else text_field
        if column not in calibration.column_names:
            raise ValueError(f"calibration=<a Dataset> has no {column!r} column (text_field="
                             f"{text_field!r}, chat_template={chat}); columns: "
                             f"{calibration.column_names}")
        calibration = calibration[column]
    items = list(calibration)
    if chat:
        if not items or not all(is_conversation(c) for c in items):
            raise ValueError("chat_template=True: calibration= must be a path to a .jsonl file of "
                             "conversations or a non-empty list of conversations (lists of "
                             "{'role': ..., 'content': ...} dicts)")
        body = "".join(json.dumps({"messages": c}) + "\n" for c in items)
        what = "conversations"
    else:
        if items and all(is_conversation(c) for c in items):
            raise ValueError("calibration= holds conversations: pass chat_template=True to render "
                             "them with the tokenizer's chat template")
        if not items or not all(isinstance(t, str) for t in items):
            raise ValueError("calibration= must be a named source ('embedded', 'c4', 'wikitext2', "
                             "'hf:<id>'), a path, a datasets.Dataset, a non-empty list of strings "
                             "or (with chat_template=True) of conversations")
        body = "".join(json.dumps({"text": t}) + "\n" for t in items)
        what = "texts"
    (work / "calibration.jsonl").write_text(body, encoding="utf-8")
    digest = hashlib.blake2b(body.encode(), digest_size=8).hexdigest()
    return str(work / "calibration.jsonl"), f"{len(items)} {what} given to prune() (digest {digest})"


def is_conversation(item) -> bool:
    """A list of {"role", "content"} dicts."""
    return (isinstance(item, list) and bool(item)
            and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in item))


API_KEYS = {"data.source": "calibration", "run.model": "model", "run.output_dir": "output_dir",
            "run.monitor.progress": "progress", "run.monitor.tensorboard": "tensorboard",
            "run.judge": "judge", "run.device": "device", "run.dtype": "dtype"}
"""Config keys (the CLI's names) → ``prune``'s parameter of the same meaning."""

DATA_KEYS = ("nsamples", "seqlen", "seed", "batch_size", "text_field", "chat_template", "held_out")
"""``data.*`` keys that are ``prune`` parameters of the same name."""

CONFIG_KEY = re.compile(r"(?<![\w.])(?:data|model|run)(?:\.[A-Za-z_]\w*)+(?!\w|:|\.\w)")
"""A dotted config key in a message; not one followed by ":" (a fingerprint's ``key: old → new``
row names what the run directory recorded)."""


def api_name(key: str) -> str:
    """``prune``'s name for the config key ``key`` (the key itself when prune has none)."""
    section, _, rest = key.partition(".")
    if key in API_KEYS:
        return API_KEYS[key]
    if section == "data" and rest in DATA_KEYS:
        return rest
    if section == "model" and rest in RotationSettings.names():
        return rest
    if key == "run.eval" or key.startswith("run.eval."):
        return key.removeprefix("run.")
    return key


def in_api_words(message: str, work: Path, calibration_file: str | None) -> str:
    """``message`` with config keys renamed to ``prune``'s parameters and prune()'s temporary
    files described instead of named."""
    if calibration_file is not None:
        given = "<the calibration given to prune()>"
        message = message.replace(repr(calibration_file), given).replace(calibration_file, given)
    message = message.replace(str(work), "<prune()'s temporary folder>")
    message = re.sub(r"(?<![\w.])source=", "calibration=", message)  # the data module's own word
    return CONFIG_KEY.sub(lambda m: api_name(m.group(0)), message)


def split_options(options: dict) -> tuple[dict, dict]:
    """``prune``'s extra keywords → (rotation settings, run settings); unknown ones are refused."""
    names = set(RotationSettings.names()) - {"method", "pattern", "steps"}
    unknown = sorted(set(options) - names - set(RUN_OPTIONS) - {"eval"})
    if unknown:
        raise TypeError(f"prune() got unknown options {unknown}; allowed: {sorted(names)}, "
                        f"{list(RUN_OPTIONS)} and eval")
    return ({k: v for k, v in options.items() if k in names},
            {k: v for k, v in options.items() if k not in names})


def run_options(model, output_dir: Path, run: dict, saving: bool, name: str | None = None) -> RunOptions:
    """The run's options for a loaded ``model`` (reported as ``name``, else its
    ``config.name_or_path``): evaluation (``eval``: an EvalPlan, True for the
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
    name = name or getattr(model.config, "name_or_path", "") or "in-memory"
    return RunOptions(model=name, dtype=str(param.dtype).removeprefix("torch."),
                      device=run.get("device", str(param.device)), output_dir=str(output_dir),
                      eval=ev, export=ExportOptions(save=saving),
                      monitor=MonitorOptions(tensorboard=run.get("tensorboard", False),
                                             progress=run.get("progress", True), picture_layers=[]))


def prune(model, tokenizer=None, *, method: str = "sparsegpt", pattern: str = "2:4",
          calibration="embedded", nsamples: int = 32, seqlen: int = 512, steps: int = 50,
          held_out: int | None = None, judge: bool = False, output_dir: str | Path | None = None,
          text_field: str = "text", chat_template: bool = False, seed: int = 0,
          batch_size: int = 8, **options) -> PruneResult:
    """Rotate and prune ``model``; returns the pruned model and the report.

    Args:
        model: a model id or path (as ``run.model``: "smollm2-135m-instruct", a .gguf file, a
            local Hugging Face directory, a hub id; the report names it as given) or an already
            loaded ``PreTrainedModel`` (on the CPU or a GPU; pruned in place) — then pass its
            ``tokenizer``.
        tokenizer: the model's tokenizer (loaded with the model when ``model`` is a name).
        method, pattern, steps: the pruner, the pattern ("2:4", "4:8", "50%") and the rotation
            steps per layer (0: the plain pruner).
        calibration: "embedded", "c4", "wikitext2", "hf:<id>", a path, a ``datasets.Dataset``
            (its ``text_field`` column) or a list of strings; ``nsamples`` windows of ``seqlen``
            tokens. With ``chat_template``: a .jsonl file of conversations, a list of
            conversations (lists of {"role", "content"} dicts) or a Dataset's "messages" column.
        held_out: extra calibration windows no fit sees (``data.held_out``): the guard and the
            judge decide on them. None: a quarter of ``nsamples`` (8 at the default 32, as the
            configs); 0: none (the guard then decides on the fitted windows).
        judge: also run the plain pruner and return whichever finished model is better on the
            held-out windows (``run.judge``; needs ``held_out`` or ``holdout``). A loaded model
            is copied once for the plain run (twice its memory while both exist).
        output_dir: keep a run directory there (results.json, report.md, the saved model; a
            re-run resumes); None: nothing is written but the report.
        text_field: the field holding the text in json/jsonl/parquet/hub sources and the column
            of a ``datasets.Dataset`` (``data.text_field``).
        chat_template: calibrate on conversations rendered with the tokenizer's chat template.
        seed: the window sampling seed (``data.seed``), also given to ``seed_everything``.
        batch_size: calibration windows per forward pass (``data.batch_size``).
        options: any other rotation setting (objective, guard, permute, role_weights, r1, …), and
            ``eval`` (True: perplexity on the embedded evaluation text before and after; False:
            none; or an :class:`~drlightning.eval.plan.EvalPlan`), ``device``, ``dtype`` (for a
            model given by name), ``progress``, ``tensorboard``.

    Errors name these parameters (``nsamples=``, ``calibration=``, …), not the CLI's keys.
    """
    held_out = nsamples // 4 if held_out is None and isinstance(nsamples, int) else held_out
    data = {"nsamples": nsamples, "seqlen": seqlen, "seed": seed, "batch_size": batch_size,
            "text_field": text_field, "chat_template": chat_template, "held_out": held_out}
    with tempfile.TemporaryDirectory(prefix="drl-prune-") as tmp:
        work, made = Path(tmp), []
        try:
            return _prune(model, tokenizer, work, made, calibration, data, method=method,
                          pattern=pattern, steps=steps, judge=judge, output_dir=output_dir,
                          options=options)
        except (ValueError, FileNotFoundError) as err:
            text = in_api_words(str(err), work, made[0] if made else None)
            try:
                renamed = type(err)(text)
            except Exception:  # an error class with other arguments (UnicodeDecodeError)
                renamed = ValueError(text)
            raise renamed.with_traceback(err.__traceback__) from None


def _prune(model, tokenizer, work: Path, made: list, calibration, data: dict, *, method: str,
           pattern: str, steps: int, judge: bool, output_dir, options: dict) -> PruneResult:
    """:func:`prune` in ``work`` (a temporary folder); ``made`` gets the calibration file's path
    when prune() writes one."""
    from lightning import seed_everything

    from .lightning.calibration import CalibrationDataModule
    from .lightning.rotation_module import RotationModule
    from .models import load_model
    from .pipeline.baselines import PLAIN, run_with_plain_baseline
    from .pipeline.preflight import check_calibration_text
    from .pipeline.setup import check_options

    if not isinstance(data["seed"], int) or isinstance(data["seed"], bool):
        raise ValueError(f"seed={data['seed']!r} must be an integer")
    rotation, run = split_options(options)
    settings = RotationSettings(method=method, pattern=pattern, steps=steps, **rotation)
    if not isinstance(model, str | Path) and tokenizer is None:
        raise ValueError("prune(model=<a loaded model>) needs its tokenizer: prune(model, tokenizer)")
    source, label = calibration_source(calibration, work, data["text_field"],
                                       chat=data["chat_template"] is True)
    if label is not None:
        made.append(source)
        data = {**data, "text_field": "text"}  # the field prune() wrote
    datamodule = CalibrationDataModule(source=source, **data)
    datamodule.source_label = label
    check_calibration_text(datamodule)  # before the model loads
    name = str(model) if isinstance(model, str | Path) else None
    if name is not None:
        model, own = load_model(name, dtype=run.get("dtype", "float32"))
        tokenizer = tokenizer or own
    out = Path(output_dir) if output_dir is not None else work / "run"
    opts = replace(run_options(model, out, run, saving=output_dir is not None, name=name), judge=judge)
    check_options(opts, settings, data["held_out"])  # a refused judge copies nothing
    seed_everything(data["seed"], verbose=False)
    plain = (copy.deepcopy(model), tokenizer) if judge else None
    report = run_with_plain_baseline(RotationModule.from_settings(settings), datamodule, opts,
                                     loaded=(model, tokenizer), plain_loaded=plain,
                                     settings={"api": "drlightning.prune",
                                               "seed_everything": data["seed"]})
    if plain is not None and report["judge"]["kept"] == PLAIN:
        model = plain[0]
    return PruneResult(model, tokenizer, report)
