"""TensorBoard summary of a run: per-layer scalars (step = layer index), importance pictures,
model-level perplexity and zero-shot numbers. Per-step entropy curves live in the per-layer runs."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write_bytes
from ..lightning.rotation_module import RotationModule
from .pictures import error_plot_png, importance_png, png_to_chw

LAYER_SCALARS = ("initial_entropy", "best_entropy", "initial_loss", "best_loss", "best_step",
                 "orthogonality_error", "invariance_error", "pruning_error",
                 "pruning_error_rotated", "pruning_error_unrotated", "pruning_error_r2_identity",
                 "seconds", "fit_seconds", "prune_seconds")
ERROR_PLOT = "pictures/pruning_error.png"
"""Per-layer pruning error plot, relative to the run directory (linked from report.md)."""


class RunMonitor:
    """Writes ``<run_dir>/tensorboard/summary`` and ``<run_dir>/pictures/*.png``."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, picture_layers: list[int] | None = None,
                 picture_role: str = "o", sparsity: float = 0.5) -> None:
        self.run_dir = Path(run_dir)
        self.picture_layers = set(picture_layers or [])
        self.picture_role = picture_role
        self.sparsity = sparsity
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard" / "summary"))

    def layer_done(self, report: dict) -> None:
        """Per-layer scalars at step = layer index (one curve over the depth of the model)."""
        if self.writer is None:
            return
        step = report["layer"]
        for key in LAYER_SCALARS:
            if isinstance(report.get(key), int | float):
                self.writer.add_scalar(f"layer/{key}", report[key], step)
        for role, value in (report.get("sparsity") or {}).items():
            self.writer.add_scalar(f"sparsity/{role}", value, step)
        if "guard" in report:
            self.writer.add_scalar("layer/guard_kept_rotation", float(report["guard"] == "rotated"),
                                   step)
        for space, choice in (report.get("permutation") or {}).items():
            self.writer.add_scalar(f"permutation/{space}_kept", float(choice["kept"]), step)
        self.writer.flush()

    def fit_done(self, index: int, module: RotationModule) -> None:
        """Importance picture of the chosen linear of a chosen layer (PNG file + TensorBoard)."""
        if index not in self.picture_layers:
            return
        before, after = module.importance(self.picture_role)
        title = (f"layer {index} {self.picture_role}_proj, {module.hparams.method} importance, "
                 f"normalised per {'column' if self.picture_role == 'down' else 'row'}")
        png = importance_png(before, after, self.picture_role, title, self.sparsity)
        atomic_write_bytes(self.run_dir / "pictures" / f"layer_{index:02d}_{self.picture_role}.png", png)
        if self.writer is not None:
            self.writer.add_image(f"importance/{self.picture_role}", png_to_chw(png), index)
            self.writer.flush()

    def model_done(self, results: dict) -> str | None:
        """Model-level numbers: perplexity and zero-shot accuracy, dense (step 0) and pruned (step 1),
        and the per-layer pruning error plot; returns the plot's path in the run directory."""
        plot = None
        if results.get("layers"):
            png = error_plot_png(results["layers"])
            atomic_write_bytes(self.run_dir / ERROR_PLOT, png)
            plot = ERROR_PLOT
            if self.writer is not None:
                self.writer.add_image("pruning_error", png_to_chw(png), 0)
        if self.writer is None:
            return plot
        for step, (ppl_key, zs_key) in enumerate((("dense_ppl", "dense_zero_shot"), ("ppl", "zero_shot"))):
            for name, value in (results.get(ppl_key) or {}).items():
                self.writer.add_scalar(f"model/ppl_{name}", value, step)
            zs = results.get(zs_key) or {}
            for task, row in (zs.get("tasks") or {}).items():
                self.writer.add_scalar(f"model/acc_{task}", row["value"], step)
            if zs.get("tasks"):
                self.writer.add_scalar("model/zero_shot_mean", zs["mean"], step)
        self.writer.flush()
        return plot

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
