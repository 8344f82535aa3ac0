"""``drlightning lora fit --config configs/<model>/lora.yaml``: LoRA recovery as a LightningCLI.

``model`` = LoRAModule (the pruned run to recover), ``data`` = TextDataModule, ``export`` = the
LoRAExport callback (evaluation, adapters, masked merge, report), ``checkpoint`` = ModelCheckpoint
on val/loss (adapter weights only). Resume with ``--ckpt_path last``.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from drlightning.callbacks.lora import LoRAExport

from ..cli_errors import CLI_SETTINGS, FriendlyParsing, check_accelerator
from .module import LoRAModule
from .text_data import TextDataModule

TRAINER_DEFAULTS = {
    "accelerator": "auto",
    "devices": 1,
    "precision": "32-true",
    "max_steps": 300,
    "max_epochs": -1,
    "val_check_interval": 50,
    "check_val_every_n_epoch": None,
    "gradient_clip_val": 1.0,
    "log_every_n_steps": 10,
    "enable_model_summary": False,
}


def _checkpoint_dir(output_dir: str) -> str:
    return str(Path(output_dir) / "checkpoints")


class LoRACLI(FriendlyParsing, LightningCLI):
    """LightningCLI of the LoRA recovery stage (see the module docstring)."""

    def __init__(self, args=None, run: bool = True) -> None:
        super().__init__(LoRAModule, TextDataModule, trainer_defaults=TRAINER_DEFAULTS,
                         save_config_kwargs={"overwrite": True}, args=args, run=run, **CLI_SETTINGS)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--stage", default="lora",
                            help="'lora': lets `drlightning fit --config` route this file here")
        parser.add_lightning_class_args(LoRAExport, "export")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/loss", "checkpoint.mode": "min",
                             "checkpoint.save_last": True, "checkpoint.save_top_k": 1,
                             "checkpoint.filename": "best-{step}"})
        parser.link_arguments("export.output_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)

    def before_instantiate_classes(self) -> None:
        """Log to ``<export.output_dir>/tensorboard`` and keep Lightning's files there, unless the
        config names another logger or root directory; an accelerator this machine lacks is refused."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        check_accelerator(cfg.trainer)
        every, last = cfg.trainer.val_check_interval, cfg.trainer.max_steps
        if isinstance(every, int) and last is not None and 0 < last < every:
            raise ValueError(f"trainer.val_check_interval={every} > trainer.max_steps={last}: "
                             "validation, and with it the choice of the best checkpoint, would never "
                             "run; set val_check_interval ≤ max_steps")
        out = cfg.export.output_dir
        if cfg.trainer.logger in (None, True):
            cfg.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=str(out), name="tensorboard", version=""))
        cfg.trainer.default_root_dir = cfg.trainer.default_root_dir or str(out)

    def before_fit(self) -> None:
        stage = self.config[self.subcommand].get("stage")
        if stage != "lora":
            raise ValueError(f"stage={stage!r}; the LoRA CLI runs configs with stage: lora")
