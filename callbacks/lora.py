"""LoRAExport: evaluate before/after LoRA recovery, save adapters and the sparsity-keeping merge."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer

from drlightning.atomic import atomic_write_text, write_dir_atomically
from drlightning.eval.api import evaluate_loaded
from drlightning.eval.plan import EvalPlan
from drlightning.lora.masked_merge import masked_merge, sparsity_masks, sparsity_summary
from drlightning.lora.report import adapter_card, lora_model_card, lora_report
from drlightning.reporting.results import (
    EVAL_PROTOCOL,
    device_name,
    ensure_writable,
    versions,
    write_json,
)


def save_adapter_dir(peft_model, path: Path, card: str | None = None) -> Path:
    """peft ``save_pretrained`` into a temporary sibling, renamed into place (atomic); ``card``
    replaces the blank template README.md peft writes (``None``: the template is removed)."""
    def write(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        readme = Path(tmp) / "README.md"
        if card is not None:
            readme.write_text(card, encoding="utf-8")
        else:
            readme.unlink(missing_ok=True)

    return write_dir_atomically(path, write)


class LoRAExport(Callback):
    """At fit start evaluate the pruned model; at fit end (with the best checkpoint's adapters)
    evaluate with adapters, save them, merge them onto the kept positions only, evaluate and save
    the merged model, and write ``results.json`` and ``report.md``.

    Args:
        output_dir: LoRA run directory (checkpoints/, tensorboard/, adapter/, model/, results).
        merge: fold the adapters into the weights as W ← M ⊙ (W + BA) and save ``model/``.
        save_adapter: save the unmerged adapters (peft format) in ``adapter/``.
        use_best: export the best checkpoint (lowest val/loss) rather than the last step.
        eval: what to measure before and after (the evaluation plan of ``drlightning eval`` and
            a fit's ``run.eval``; ``seqlen`` unset: the source run's, else 512).
        progress: progress bars during evaluation.
    """

    def __init__(self, output_dir: str = "runs/smollm2/lora", merge: bool = True,
                 save_adapter: bool = True, use_best: bool = True, eval: EvalPlan | None = None,
                 progress: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.merge, self.save_adapter, self.use_best = merge, save_adapter, use_best
        self.plan = eval or EvalPlan()
        self.progress = progress
        self.source: dict | None = None
        self.before: dict | None = None
        self.start = time.perf_counter()

    def _evaluate(self, model, tokenizer) -> dict:
        return evaluate_loaded(model, tokenizer, self.plan, progress=self.progress)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        ensure_writable(self.output_dir)
        from drlightning.reporting.report import load_run

        run = Path(pl_module.hparams.model)
        self.source = load_run(run) if (run / "results.json").is_file() else None
        self.plan = self.plan.resolved(((self.source or {}).get("eval") or {}).get("seqlen"))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Evaluate the pruned model without adapters (cached in the run directory for resumes)."""
        if not trainer.is_global_zero:
            return
        cache = self.output_dir / "state" / "before_eval.json"
        wanted = {"model": pl_module.hparams.model, **self.plan.protocol()}
        if cache.is_file():
            import json

            saved = json.loads(cache.read_text(encoding="utf-8"))
            if saved.get("wanted") == wanted:
                self.before = saved["result"]
                return
        with pl_module.model.disable_adapter():
            self.before = self._evaluate(pl_module.model, pl_module.tokenizer)
        write_json(cache, {"wanted": wanted, "result": self.before})

    def _best_adapters(self, trainer: Trainer, pl_module: LightningModule) -> str | None:
        ckpt = trainer.checkpoint_callback
        path = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        if not self.use_best or not path or not Path(path).is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        pl_module.load_adapter_state(state)
        return path

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        best = self._best_adapters(trainer, pl_module)
        peft_model, tok = pl_module.model, pl_module.tokenizer
        after_adapter = self._evaluate(peft_model, tok)
        hparams = {k: v for k, v in pl_module.hparams.items() if not k.startswith("_")}
        results = {"model": pl_module.hparams.model, "lora": hparams,
                   "data": trainer.datamodule.protocol() if trainer.datamodule else None,
                   "steps": trainer.global_step, "best_checkpoint": best,
                   "source_run": self.source, "before": self.before,
                   "after_adapter": after_adapter,
                   "eval": {**self.plan.protocol(), "protocol": EVAL_PROTOCOL}}
        if self.save_adapter:
            results["adapter_path"] = str(save_adapter_dir(peft_model, self.output_dir / "adapter",
                                                           adapter_card(results)))
        if self.merge:
            results.update(self._merge(pl_module))
            path = Path(results["export"]["path"])
            atomic_write_text(path / "README.md", lora_model_card(results, str(path)))
        results.update(device=device_name(pl_module.device), versions=versions(),
                       seconds=time.perf_counter() - self.start)
        self._log_model_scalars(trainer, results)
        write_json(self.output_dir / "results.json", results)
        report = lora_report(results)
        atomic_write_text(self.output_dir / "report.md", report)
        print(report)

    def _merge(self, pl_module: LightningModule) -> dict:
        from drlightning.export import save_model_dir

        peft_model = pl_module.model
        names = [n for n, m in peft_model.get_base_model().named_modules() if hasattr(m, "lora_A")]
        masks = sparsity_masks(peft_model.get_base_model(), names)
        merged = masked_merge(peft_model, masks)
        pl_module.model = merged
        sparsity = sparsity_summary(merged, masks)
        after = self._evaluate(merged, pl_module.tokenizer)
        cfg = merged.config.to_dict()
        path = save_model_dir(merged, pl_module.tokenizer, self.output_dir / "model",
                              {k: v for k, v in cfg.items() if k.startswith("drl_")})
        return {"after": after, "sparsity": sparsity, "export": {"path": str(path)}}

    @staticmethod
    def _log_model_scalars(trainer: Trainer, results: dict) -> None:
        if trainer.logger is None:
            return
        metrics = {}
        for stage in ("before", "after_adapter", "after"):
            for name, value in ((results.get(stage) or {}).get("ppl") or {}).items():
                metrics[f"model/ppl_{name}/{stage}"] = value
            zs = (results.get(stage) or {}).get("zero_shot") or {}
            if zs.get("tasks"):
                metrics[f"model/zero_shot_mean/{stage}"] = zs["mean"]
        if metrics:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
