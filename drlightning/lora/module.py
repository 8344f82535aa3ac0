"""LoRAModule: causal-LM recovery fine-tuning of a pruned model; base weights and rotations frozen."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import LightningModule
from torchmetrics import MeanMetric

from ..models.adapters import ADAPTERS

PAPER_DEFAULTS = {"r": 8, "alpha": 32, "dropout": 0.1, "lr": 2e-4, "weight_decay": 1e-2,
                  "warmup_steps": 400}
"""LoRA recovery settings of the paper's Appendix F."""


def resolve_model_dir(spec: str) -> str:
    """A drlightning run directory stands for its saved ``model/``; anything else is kept."""
    path = Path(spec)
    if (path / "model" / "config.json").is_file():
        return str(path / "model")
    if path.exists() and not (path / "config.json").is_file() and not path.is_file():
        raise FileNotFoundError(f"model={spec!r} is neither a run directory (with model/) nor a "
                                f"saved model directory (with config.json)")
    return spec


def target_names(config, targets: list[str] | None) -> list[str]:
    """peft ``target_modules`` (module-name suffixes) from roles (q … down) or literal names."""
    base = getattr(config, "base_model_type", None) or config.model_type
    adapter = next((a for a in ADAPTERS if base in a.model_types), ADAPTERS[0])
    by_role = {role: path.split(".")[-1] for role, path in adapter.linears.items()}
    if adapter.experts:  # peft has no LoRA for the experts' 3-D weights: attention only
        mlp = {"gate", "up", "down", *(by_role[r] for r in ("gate", "up", "down"))}
        if targets and set(targets) & mlp:
            raise ValueError(f"target_modules={targets}: LoRA on a Mixture-of-Experts model "
                             f"({adapter.name}) can target the attention only (q, k, v, o); the "
                             "experts are 3-D weights peft does not wrap")
        by_role = {r: by_role[r] for r in ("q", "k", "v", "o")}
    if targets is None:
        return adapter.module_names(tuple(by_role))
    if not targets:
        raise ValueError("target_modules is empty; give roles (q k v o gate up down) or module names")
    return list(dict.fromkeys(by_role.get(t, t) for t in targets))


def _masked_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft LoRA Linear forward with the update restricted to the kept positions: (W + M ⊙ BA)x."""
    result = self.base_layer(x, *args, **kwargs)
    if self.disable_adapters or self.merged:
        return result
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        delta = (b @ a) * self.scaling[name] * self.drl_mask
        x_in = self.lora_dropout[name](x).to(a.dtype)
        result = result + torch.nn.functional.linear(x_in, delta).to(result.dtype)
    return result


def mask_lora_updates(peft_model: torch.nn.Module) -> int:
    """Make every LoRA linear train M ⊙ BA (M = its base weight's non-zeros); returns the count."""
    import types

    from peft.tuners.lora import Linear as LoraLinear

    count = 0
    for module in peft_model.modules():
        if isinstance(module, LoraLinear):
            weight = module.get_base_layer().weight
            module.register_buffer("drl_mask", weight != 0, persistent=False)
            module.forward = types.MethodType(_masked_forward, module)
            count += 1
    return count


class LoRAModule(LightningModule):
    """Train LoRA adapters (peft) on a frozen pruned model; the training loss is next-token CE.

    Args:
        model: a drlightning run directory (its ``model/`` is loaded), a saved model directory,
            "smollm2-135m-instruct" or a hub id.
        r: LoRA rank.
        alpha: LoRA alpha (scaling alpha / r).
        dropout: dropout on the LoRA input.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps, then linear decay to 0 at the last step.
        target_modules: roles (q, k, v, o, gate, up, down) or module names; default all seven.
        dtype: dtype the base model is loaded in (float32 on CPU; bfloat16 with bf16-true on GPU).
        mask_updates: train the update as M ⊙ BA (M = kept positions of the pruned weight), so
            the model trained is exactly the sparse model the merge produces; False trains plain
            LoRA (a dense update) whose merge then drops the pruned positions.
        trust_remote_code: allow remote modelling code of a hub model.
    """

    def __init__(self, model: str = "runs/smollm2/sparsegpt-2of4", r: int = 8, alpha: float = 32,
                 dropout: float = 0.1, lr: float = 2e-4, weight_decay: float = 1e-2,
                 warmup_steps: int = 400, target_modules: list[str] | None = None,
                 dtype: str = "float32", mask_updates: bool = True,
                 trust_remote_code: bool = False) -> None:
        super().__init__()
        for name, value, low in (("r", r, 1), ("warmup_steps", warmup_steps, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer ≥ {low}")
        if not lr > 0 or not alpha > 0 or not 0 <= dropout < 1 or weight_decay < 0:
            raise ValueError(f"need lr > 0, alpha > 0, 0 ≤ dropout < 1, weight_decay ≥ 0; got lr={lr}, "
                             f"alpha={alpha}, dropout={dropout}, weight_decay={weight_decay}")
        self.save_hyperparameters()
        self.strict_loading = False  # checkpoints hold the adapter weights only
        self.model, self.tokenizer = self._load(resolve_model_dir(model))
        self.model.train()  # loaded in eval mode; LoRA dropout needs train mode
        self.val_loss = MeanMetric()

    def _load(self, spec: str):
        from peft import LoraConfig, get_peft_model

        from ..eval.api import load_any

        hp = self.hparams
        base, tokenizer = load_any(spec, None, hp.dtype, hp.trust_remote_code)
        for p in base.parameters():
            p.requires_grad_(False)
        config = LoraConfig(r=hp.r, lora_alpha=hp.alpha, lora_dropout=hp.dropout, bias="none",
                            target_modules=target_names(base.config, hp.target_modules),
                            task_type="CAUSAL_LM")
        model = get_peft_model(base, config)
        if hp.mask_updates:
            mask_lora_updates(model)
        return model, tokenizer

    @property
    def base_model(self) -> torch.nn.Module:
        """The underlying (pruned, rotated) transformers model holding the LoRA layers."""
        return self.model.get_base_model()

    def lora_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The trainable adapter parameters by name."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of a batch of token windows."""
        return self.model(input_ids=input_ids, labels=input_ids).loss

    def on_train_start(self) -> None:
        """Loaded models come in eval mode; LoRA dropout needs train mode."""
        self.model.train()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}; "
                                     f"lower model.lr (now {self.hparams.lr})")
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.shape[0])
        self.log("train/ppl", loss.detach().exp(), batch_size=batch.shape[0])
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.val_loss.update(self(batch), weight=batch.shape[0])

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/ppl", loss.exp())

    def configure_optimizers(self):
        hp = self.hparams
        params = list(self.lora_parameters().values())
        opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            return max(0.0, (total - step) / max(total - hp.warmup_steps, 1))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only the adapter weights in checkpoints (the base model is the run's saved model)."""
        keep = set(self.lora_parameters())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def load_adapter_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load adapter weights (e.g. a checkpoint's ``state_dict``); every adapter must be present."""
        missing = set(self.lora_parameters()) - set(state_dict)
        if missing:
            raise KeyError(f"adapter checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
        self.load_state_dict(state_dict, strict=False)
