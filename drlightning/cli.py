"""``drlightning fit --config configs/<model>/<method>-<pattern>.yaml``: a LightningCLI whose fit
runs the per-layer rotate → merge → prune loop (a fresh Trainer per layer)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from . import cli_errors as errors
from .cli_errors import CLI_SETTINGS, USER_ERRORS, FriendlyParsing
from .lightning.calibration import CalibrationDataModule
from .lightning.rotation_module import RotationModule
from .pipeline.baselines import run_with_plain_baseline
from .pipeline.job import quiet_lightning
from .pipeline.options import RunOptions, moved_keys
from .pipeline.trainers import TRAINER_DEFAULTS, check_logger, check_precision, default_trainer_factory


class DRLightningCLI(FriendlyParsing, LightningCLI):
    """LightningCLI for drlightning: ``model`` = per-layer RotationModule settings, ``data`` =
    calibration data, ``trainer`` = the template of each layer's Trainer, ``run`` = RunOptions."""

    def __init__(self, args=None, run: bool = True) -> None:
        super().__init__(RotationModule, CalibrationDataModule, trainer_defaults=TRAINER_DEFAULTS,
                         save_config_callback=None, args=args, run=run, **CLI_SETTINGS)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunOptions, "run")
        parser.link_arguments("model.steps", "trainer.max_steps")

    def before_instantiate_classes(self) -> None:
        """Before any Trainer is built: the accelerator exists here, and one process (one device,
        one node) runs the layer loop."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        errors.check_accelerator(cfg.trainer)
        errors.check_one_process(cfg.trainer)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Only ``fit``: the layer loop has no separate validate/test/predict stage yet."""
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}}

    def fit(self, model: RotationModule, datamodule: CalibrationDataModule, **kw) -> dict:
        """Run the layer loop; the Trainer built by LightningCLI is used as the per-layer template."""
        if kw.get("ckpt_path") is not None:
            raise ValueError(f"ckpt_path={kw['ckpt_path']!r}: the rotation stage keeps no Lightning "
                             "checkpoint; its run directory's state/ is its checkpoint — re-run the "
                             "same command to resume (ckpt_path resumes the LoRA stage only)")
        cfg = self.config["fit"]
        check_precision(cfg.trainer.precision)
        opts = self.config_init["fit"]["run"]
        base = {k: v for k, v in self.config_init["fit"]["trainer"].items()
                if k not in ("callbacks", "max_steps", "logger")}
        model.rotation.trainer_clipping(base)  # a conflicting trainer.gradient_clip_val fails before the run
        check_logger(self.config_init["fit"]["trainer"].get("logger"))  # honoured or refused, never dropped
        listed = self.config_init["fit"]["trainer"].get("callbacks") or []
        make = default_trainer_factory(opts, Path(opts.output_dir), base, loop_callbacks(listed))
        text = self._parser("fit").dump(cfg, skip_none=False)
        shaping = {k: base.get(k) for k, default in RESULT_SHAPING_TRAINER.items()
                   if base.get(k, default) != default}
        settings = {"seed_everything": cfg.get("seed_everything"),
                    "trainer": {"precision": str(cfg.trainer.precision), **shaping}}
        self.results = run_with_plain_baseline(model, datamodule, opts, make, config_text=text,
                                               settings=settings)
        return self.results


RESULT_SHAPING_TRAINER = {"accumulate_grad_batches": 1, "deterministic": None, "benchmark": None,
                          "limit_train_batches": None, "max_epochs": None, "min_steps": None,
                          "min_epochs": None, "overfit_batches": 0.0, "max_time": None,
                          "gradient_clip_val": None, "gradient_clip_algorithm": None}
"""Trainer settings that change what a layer's fit learns, with Lightning's defaults: a value
other than the default joins the run fingerprint (a resumed run must use the same)."""


def loop_callbacks(listed: list) -> list:
    """The user's ``trainer.callbacks`` for every layer's Trainer. MergeRotations and PruneLayer
    are part of every per-layer fit already: listed ones are said so and not added twice."""
    from drlightning.callbacks import MergeRotations, PruneLayer

    own = [type(c).__name__ for c in listed if isinstance(c, MergeRotations | PruneLayer)]
    if own:
        print(f"note: trainer.callbacks lists {', '.join(own)}: every per-layer fit merges and "
              "prunes with them already; they are not added a second time", flush=True)
    return [c for c in listed if not isinstance(c, MergeRotations | PruneLayer)]


COMMANDS = {
    "fit": "rotate and prune a model (--config configs/<model>/<method>-<pattern>.yaml)",
    "lora fit": "LoRA recovery fine-tuning of a pruned run (--config configs/smollm2/lora.yaml)",
    "eval": "perplexity and zero-shot accuracy of a model, a GGUF file or a run directory",
    "compare": "the results of run directories side by side (RUN_DIR [RUN_DIR ...])",
}


def usage() -> str:
    """The top-level help: every subcommand with one line."""
    width = max(map(len, COMMANDS))
    lines = ["usage: drlightning COMMAND [options]   (drlightning COMMAND --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def _configs(argv: list[str]) -> list[dict]:
    """The ``--config`` files named on the command line, parsed; a malformed one is a one-line
    ValueError naming the file and the line (:func:`read_config`)."""
    return [errors.read_config(path) for path in errors.config_paths(argv)]


def _with_model(args: list[str]) -> list[str]:
    """``drlightning eval RUN_DIR --eval.x …``: the one bare argument is ``--model RUN_DIR``."""
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            if any(a == "--model" or a.startswith("--model=") for a in args):
                raise ValueError(f"drlightning eval: {arg!r} and --model both name the model; "
                                 "allowed: one of them (drlightning eval RUN_DIR or --model MODEL)")
            return [*args[:i], "--model", arg, *args[i + 1:]]
        i += 1 if "=" in arg or arg in ("-h", "--help") else 2
    return args


def eval_command(args: list[str]) -> dict:
    """``drlightning eval [RUN_DIR] [--model M] [--eval.* …]``: for a run directory the run's own
    evaluation plan, with only the fields set on the command line or in ``--config`` changed."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from .eval.api import cli_plan, evaluate
    from .eval.plan import PLAN_FIELDS

    args = _with_model(args)
    parser = ArgumentParser(prog="drlightning eval", exit_on_error=False, description=(
        "drlightning eval RUN_DIR|--model MODEL [--eval.* ...]: perplexity on eval.data and 0-shot "
        "accuracy on eval.zero_shot of a run directory (with the run's own plan), a model "
        "directory, a .gguf file or a hub id"))
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    parser.add_function_arguments(evaluate, as_group=False)
    cfg = errors.parse_friendly(parser, args, keys=tuple(f"eval.{k}" for k in PLAN_FIELDS))
    given = errors.parse_friendly(parser, args, defaults=False).as_dict().get("eval")
    kwargs = parser.instantiate_classes(cfg).as_dict()
    kwargs.pop("config", None)
    kwargs["eval"] = cli_plan(kwargs["model"], kwargs["eval"], given if isinstance(given, dict) else {},
                              kwargs["layerwise"])
    return evaluate(**kwargs)


def config_stage(argv: list[str]) -> str | None:
    """The ``stage:`` key of the last ``--config`` file on the command line (None if absent)."""
    stages = [data["stage"] for data in _configs(argv) if "stage" in data]
    return stages[-1] if stages else None


def moved_options(argv: list[str], section: str) -> list[str]:
    """Keys of ``section`` (in the ``--config`` files and as ``--<section>.<key>`` flags; the
    top-level flags for ``section == ""``) written before they moved (:data:`MOVED`)."""
    keys = [k for data in _configs(argv) if isinstance(data.get(section), dict) for k in data[section]]
    flag = f"--{section}." if section else "--"
    keys += [arg.split("=", 1)[0].removeprefix(flag) for arg in argv if arg.startswith(flag)]
    return moved_keys(section, keys)


def refuse_moved(argv: list[str], section: str, what: str) -> None:
    """One line and exit 2 when ``argv`` uses keys of ``section`` that have moved."""
    import sys

    moved = moved_options(argv, section)
    if moved:
        print(f"error: {what}: {'; '.join(moved)} (rename them in the config or on the command "
              "line)", file=sys.stderr)
        raise SystemExit(2)


def main(args: list[str] | None = None) -> None:
    """Console entry point: ``drlightning fit|lora fit|eval|compare …``.

    User errors (bad settings, missing files, failed checks) print one message and exit with
    status 2; ``--debug`` (anywhere on the command line) or ``DRL_DEBUG=1`` shows the traceback.
    """
    import os
    import sys
    import warnings

    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get("DRL_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        dispatch(argv)
    except USER_ERRORS as err:
        if debug:
            raise
        kind = "" if isinstance(err, ValueError | OSError) else f"{type(err).__name__}: "
        print(f"error: {kind}{errors.one_line(str(err))}\n(add --debug or set DRL_DEBUG=1 for the traceback)",
              file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:  # a full disk surfaces as OSError or as the writer's own error type
        if debug or not errors.disk_full(err):
            raise
        print(f"error: no space left on the device while writing ({errors.one_line(str(err))}); "
              "free some space and re-run the same command: finished layers are kept and the run "
              "resumes\n(add --debug or set DRL_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def dispatch(argv: list[str]) -> None:
    """Run the subcommand named by ``argv``; ``drlightning fit --config <file with stage: lora>``
    runs the LoRA stage as well."""
    import sys

    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        if not argv:
            raise SystemExit(2)
        return
    _configs(argv)  # a malformed --config file: one line naming it and the line, for every command
    if argv[:1] == ["eval"]:
        refuse_moved(argv[1:], "", "the evaluation options now live in one plan, --eval.*")
        eval_command(argv[1:])
    elif argv[:1] == ["compare"]:
        from .reporting.report import compare

        if argv[1:2] in (["-h"], ["--help"]):
            print("usage: drlightning compare RUN_DIR [RUN_DIR ...]\n"
                  "Print a side-by-side table of the runs' results.json.")
            return
        compare(argv[1:])  # no runs: a ValueError, reported by main
    elif argv[:1] == ["lora"] or (argv[:1] == ["fit"] and config_stage(argv) == "lora"):
        from .lora.cli import LoRACLI

        refuse_moved(argv, "export", "the LoRA stage's evaluation options now live in one plan")
        LoRACLI(args=argv[1:] if argv[:1] == ["lora"] else argv)
    else:
        refuse_moved(argv, "run", "run options now live in groups")
        with quiet_lightning():  # Lightning's tips and GPU/TPU lines; progress bars stay
            DRLightningCLI(args=argv)


if __name__ == "__main__":
    main()
