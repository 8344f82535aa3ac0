"""Pictures of importance before and after rotation (like the paper's Figure 2), as PNG bytes."""

from __future__ import annotations

import io

import torch

from ..rotation.objective import GROUP_DIMS


def normalised(scores: torch.Tensor, role: str) -> torch.Tensor:
    """Scores divided by their group sum (per row for input-side roles, per column for down)."""
    dim = GROUP_DIMS[role][0]
    s = scores.double()
    return s / s.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def kept_mask(p: torch.Tensor, role: str, sparsity: float) -> torch.Tensor:
    """True where an entry is among the (1 − sparsity) largest of its group (what a pruner keeps)."""
    dim = GROUP_DIMS[role][0]
    k = max(1, round(p.shape[dim] * (1 - sparsity)))
    idx = p.topk(k, dim=dim).indices
    return torch.zeros_like(p, dtype=torch.bool).scatter_(dim, idx, True)


def importance_png(before: torch.Tensor, after: torch.Tensor, role: str, title: str,
                   sparsity: float = 0.5, crop: int = 64) -> bytes:
    """2×2 figure: heat maps (log10 normalised importance, top-left crop) and histograms of the
    normalised importance split into kept and pruned entries, before vs after rotation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 7), constrained_layout=True)
    for col, (name, scores) in enumerate((("before rotation", before), ("after rotation", after))):
        p = normalised(scores.detach().cpu(), role)
        logp = p.clamp_min(1e-12).log10()
        im = axes[0, col].imshow(logp[:crop, :crop].numpy(), cmap="viridis", vmin=-8,
                                 vmax=float(logp.max()), aspect="auto")
        axes[0, col].set_title(f"{name}: log10 p ({crop}×{crop} crop)")
        fig.colorbar(im, ax=axes[0, col])
        keep = kept_mask(p, role, sparsity)
        bins = torch.logspace(-10, 0, 61).numpy()
        axes[1, col].hist(p[keep].clamp_min(1e-10).numpy(), bins=bins, alpha=0.7, label="kept")
        axes[1, col].hist(p[~keep].clamp_min(1e-10).numpy(), bins=bins, alpha=0.7, label="pruned")
        axes[1, col].set_xscale("log")
        pruned_share = float(p[~keep].sum() / p.sum())
        axes[1, col].set_title(f"{name}: pruned share of importance {100 * pruned_share:.1f}%")
        axes[1, col].legend()
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def error_plot_png(layers: list[dict]) -> bytes:
    """Per-layer pruning error: the rotated layer, the unrotated one (plain pruner) and the one the
    guard kept, as a line plot over the depth of the model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["layer"] for r in layers]
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    for key, label, style in (("pruning_error_unrotated", "unrotated (plain pruner)", "o--"),
                              ("pruning_error_r2_identity", "R2 = identity (shared Q)", "^--"),
                              ("pruning_error_rotated", "rotated", "s--")):
        if all(key in r for r in layers):
            ax.plot(x, [r[key] for r in layers], style, label=label, alpha=0.7)
    ax.plot(x, [r["pruning_error"] for r in layers], "k.-", label="kept")
    ax.set_xlabel("layer")
    ax.set_ylabel("‖pruned(X) − dense(X)‖ / ‖dense(X) − X‖")
    ax.set_title("layer pruning error on the calibration inputs")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def png_to_chw(png: bytes) -> torch.Tensor:
    """Decode PNG bytes to a (3, H, W) uint8 tensor for TensorBoard's ``add_image``."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(
        img.height, img.width, 3).permute(2, 0, 1)
