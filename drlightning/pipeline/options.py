"""The ``run:`` section of a config, in named groups: what to load, evaluation, export, monitoring
and how the run is launched (``run.eval.zero_shot``, ``run.launch.mode``, …)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..eval.plan import EvalPlan
from ..models import DEFAULT_MODEL


@dataclass(frozen=True)
class EvalOptions(EvalPlan):
    """Evaluation of the dense and the pruned model (``run.eval``): the evaluation plan (see
    :class:`~drlightning.eval.plan.EvalPlan`; ``seqlen`` None = the calibration seqlen) and:

    Args:
        dense: also evaluate the dense model first (perplexity and zero-shot; cached in the run's
            state, so a resumed run does not repeat it).
        dense_cache: reuse the dense evaluation of an earlier run of the same weights and
            evaluation protocol (any run directory; kept in $DRL_CACHE_DIR, default
            ~/.cache/drlightning/dense_eval). Whole-model placement only.
    """

    dense: bool = True
    dense_cache: bool = True


@dataclass
class ExportOptions:
    """The saved model (``run.export``).

    Args:
        save: save the final model as a Hugging Face directory in ``output_dir/model``.
        rotation_dtype: storage dtype of the merged boundary rotations: "auto" (float32, float64
            for float64 models), "model" (the model's dtype) or a dtype name; see
            docs/benchmarks.md for the logit error of each choice.
    """

    save: bool = True
    rotation_dtype: str = "auto"


@dataclass
class MonitorOptions:
    """What a run shows and reports besides its results (``run.monitor``).

    Args:
        tensorboard: log each layer's objective curve to ``output_dir/tensorboard/layer_XX``.
        progress: show progress bars.
        picture_layers: layers whose importance picture (before/after rotation) is drawn to
            ``output_dir/pictures`` and TensorBoard.
        picture_role: the linear drawn: q, k, v, o, gate, up or down.
        unrotated_error: also prune an unrotated copy of each layer and report its pruning error
            next to the rotated one (the guard does this anyway).
        baseline_run: run directory of a baseline (e.g. the plain pruner, steps 0) for report.md's
            "gap closed" column.
        plain_baseline: run the plain pruner first (steps 0, no permutation or refit; the same
            calibration and evaluation) into ``<output_dir>/plain`` and end with dense, plain and
            DenoiseRotator side by side, with the share of the gap closed (sets ``baseline_run``).
    """

    tensorboard: bool = True
    progress: bool = True
    picture_layers: list[int] = field(default_factory=lambda: [0])
    picture_role: str = "o"
    unrotated_error: bool = False
    baseline_run: str | None = None
    plain_baseline: bool = False


@dataclass
class LaunchOptions:
    """Where the model lives and how the rotations are scheduled (``run.launch``).

    Args:
        mode: "sequential" (the paper's protocol: layer ℓ's rotations are learned on the outputs
            of the already pruned layers) or "parallel" (all rotations learned from one dense
            calibration pass, spread over the ranks of a torchrun launch; merge and pruning stay
            sequential). See docs/method.md for the difference.
        layerwise: load the model layer by layer from its safetensors shards (a local directory or
            hub id): host memory holds one decoder layer, the embeddings and head, not the whole
            model. Perplexity streams the layers; the model is saved shard by shard. Perplexity
            only (no zero-shot).
        offload_activations: keep the calibration activations in pinned host memory and move one
            batch at a time to the GPU (large models; no effect on CPU).
    """

    mode: str = "sequential"
    layerwise: bool = False
    offload_activations: bool = False


@dataclass
class RunOptions:
    """Run-level settings (the ``run:`` section of a config).

    Args:
        model: "smollm2-135m-instruct" (embedded default), a .gguf file, a local HF directory or a
            hub id.
        gguf_file: GGUF file name inside ``model`` when ``model`` is a directory.
        dtype: dtype the model is loaded in (float32, bfloat16, float16, float64).
        device: "auto", "cpu" or "cuda[:i]" for calibration replay and evaluation.
        output_dir: run directory (config, results.json, state, TensorBoard logs, saved model).
        trust_remote_code: allow remote modelling code of the *input* model (off by default).
        eval: evaluation (perplexity, zero-shot).
        export: the saved model.
        monitor: progress, TensorBoard, pictures, report extras.
        launch: whole model or layer by layer; sequential or parallel rotations.
        judge: the model-wide judge: also run the plain pruner (steps 0, no permutation or
            refit; the same fitted windows) and keep whichever finished model has the lower
            perplexity on the calibration windows no fit saw (needs held-out windows:
            ``data.held_out`` or ``model.holdout``). When the plain pruner's wins, it becomes
            the run's model and results; DenoiseRotator's go to ``output_dir/rotated``.
            results.json records the verdict (``judge``).
    """

    model: str = DEFAULT_MODEL
    gguf_file: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    output_dir: str = "runs/latest"
    trust_remote_code: bool = False
    eval: EvalOptions = field(default_factory=EvalOptions)
    export: ExportOptions = field(default_factory=ExportOptions)
    monitor: MonitorOptions = field(default_factory=MonitorOptions)
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    judge: bool = False


MOVED = {
    "run": {
        "eval_data": "eval.data", "eval_seqlen": "eval.seqlen",
        "eval_max_windows": "eval.max_windows", "eval_batch_size": "eval.batch_size",
        "dense_ppl": "eval.dense", "zero_shot": "eval.zero_shot",
        "task_data_dir": "eval.task_data_dir", "task_text": "eval.task_text",
        "task_items": "eval.task_items", "task_limit": "eval.task_limit",
        "save_model": "export.save", "rotation_dtype": "export.rotation_dtype",
        "tensorboard": "monitor.tensorboard", "progress": "monitor.progress",
        "picture_layers": "monitor.picture_layers", "picture_role": "monitor.picture_role",
        "unrotated_error": "monitor.unrotated_error", "baseline_run": "monitor.baseline_run",
        "mode": "launch.mode", "layerwise": "launch.layerwise",
        "offload_activations": "launch.offload_activations",
    },
    "export": {  # the LoRA stage's evaluation arguments, before they became one plan
        "eval_data": "eval.data", "eval_seqlen": "eval.seqlen",
        "eval_max_windows": "eval.max_windows", "eval_batch_size": "eval.batch_size",
        "zero_shot": "eval.zero_shot", "task_items": "eval.task_items",
        "task_data_dir": "eval.task_data_dir", "task_limit": "eval.task_limit",
    },
    "": {  # `drlightning eval` flags, before they became one plan
        "ppl": "eval.data", "seqlen": "eval.seqlen", "max_windows": "eval.max_windows",
        "batch_size": "eval.batch_size", "tasks": "eval.zero_shot",
        "task_data_dir": "eval.task_data_dir", "task_text": "eval.task_text",
        "task_items": "eval.task_items", "task_limit": "eval.task_limit",
    },
}
"""Section → {old key → its place now}: ``run.*`` of configs written before the groups, the LoRA
stage's ``export.*`` evaluation arguments and ``drlightning eval``'s flags before the plan."""


def moved_keys(section: str, keys) -> list[str]:
    """'<old> → <new>' (dotted under ``section``) for each of ``keys`` that moved."""
    table, prefix = MOVED[section], f"{section}." if section else ""
    return [f"{prefix}{k} → {prefix}{table[k]}" for k in dict.fromkeys(keys) if k in table]
