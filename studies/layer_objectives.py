"""Rotation objectives compared by the layer's real pruning error (dense inputs, a few layers).

    python studies/layer_objectives.py --pruner sparsegpt:2:4 --layers 0 8 14 27
    python studies/layer_objectives.py --pruner wanda:2:4 --variants plain entropy:wanda pruned_mass

Each decoder layer is fed the *dense* model's calibration inputs (32 × 512 embedded tokens), rotated
by the production ``RotationModule`` (one Lightning Trainer per variant and layer) with the
objective of the variant, merged, pruned, and scored by ‖pruned(X) − dense(X)‖ / ‖dense(X) − X‖.
Beside the error: the paper's entropy of the pruner's score at the rotation, and the decorrelation
index of the q/k/v input, mean_j diag(QᵀHQ)_j · diag(Qᵀ(H+λI)⁻¹Q)_j — 1 when the rotated inputs are
uncorrelated, larger the more SparseGPT's compensation has to work with.

Variants: ``plain`` (no rotation), ``entropy:<score>``, ``pruned_mass[:<score>]`` (score defaults to
the pruner's), ``weighted`` (pruned mass with ``role_weights: measured``), ``reweighted`` (the same, refitted
from the identity with the weights measured on the ``weighted`` rotation's layer), ``released``
(reference_quirks), and research objectives that were tried and not
adopted (defined here, not in the package): ``share`` (pruned mass normalised per row),
``group_share`` (normalised per group of M), ``obs`` (SparseGPT 2:4 only: Σ min over the pruned
pairs of w_Pᵀ (K_PP)⁻¹ w_P with K the rotated inverse Hessian's 4 × 4 blocks, each linear relative
to the identity), ``warm`` (magnitude entropy for half the steps, then pruned mass), ``mix``
(entropy/entropy₀ + pruned mass). ``@N`` sets the steps (default ``--steps``), ``/LR`` Adam's
learning rate (default 0.01), e.g. ``weighted/0.03@50``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from lightning import Trainer

from drlightning.layer.capture import OBJECTIVE_STATS, capture_layer_inputs, collect_hessians, run_layer
from drlightning.layer.prune import PruneSpec
from drlightning.layer.role_weights import measured_role_weights
from drlightning.layer.step import merge_layer, prune_candidates
from drlightning.lightning.calibration import CalibrationDataModule
from drlightning.lightning.layer_data import LayerDataModule
from drlightning.lightning.rotation_module import RotationModule
from drlightning.models import HeadLayout, adapter_for, load_model
from drlightning.pruning import parse_pattern
from drlightning.pruning.importance import damped_inverse
from drlightning.rotation import fold_norms, frozen_layer, layer_entropy
from drlightning.rotation.best_iterate import IterateTracker
from drlightning.rotation.objective import layer_pruned_mass, layer_scores
from drlightning.rotation.pruned_mass import pruned_mass

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # docblock.py, shared with the benchmarks
from docblock import write_block  # noqa: E402

PAIRS = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def _blocks(m: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The 4 × 4 diagonal blocks of QᵀMQ: (d/4, 4, 4)."""
    d = q.shape[0]
    return torch.einsum("igm,ign->gmn", q.reshape(d, d // 4, 4), (m @ q).reshape(d, d // 4, 4))


def obs_error(w: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Σ over rows and groups of 4 of the smallest OBS error of pruning 2 of the 4 weights."""
    g = w.reshape(w.shape[0], -1, 4)
    errs = []
    for a, b in PAIRS:
        ka, kb, kab = k[:, a, a], k[:, b, b], k[:, a, b]
        wa, wb = g[:, :, a], g[:, :, b]
        errs.append((kb * wa * wa - 2 * kab * wa * wb + ka * wb * wb) / (ka * kb - kab * kab))
    return torch.stack(errs).min(0).values.sum()


class Research(RotationModule):
    """RotationModule with one of the research objectives (everything else as in production)."""

    def __init__(self, variant: str, hinv: dict | None = None, **kw) -> None:
        super().__init__(**kw)
        self.variant, self.hinv = variant, hinv
        self.ref: dict[str, float] = {}

    def _pattern(self):
        return parse_pattern(self.hparams.pattern)

    def _mass_share(self, scores: dict, per_group: bool) -> torch.Tensor:
        """Pruned mass of scores normalised per row (``share``) or per group of M."""
        pattern = self._pattern()
        total = 0
        for s in scores.values():
            if per_group:
                g = s.reshape(s.shape[0], -1, pattern.m)
                g = g / g.sum(-1, keepdim=True).clamp_min(1e-30)
                total = total + torch.topk(g, pattern.n, dim=-1, largest=False).values.sum()
            else:
                total = total + pruned_mass(s / s.sum(1, keepdim=True).clamp_min(1e-30), pattern)
        return total

    def _obs(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        lay, w = self.layout, self.frozen.weights
        from drlightning.rotation.objective import rotate_inputs, rotate_outputs

        ka, km = _blocks(self.hinv["attn_in"], q), _blocks(self.hinv["mlp_in"], q)
        rh = r.repeat_interleave(lay.n_rep, dim=0)
        ob = rh.transpose(1, 2) @ self.hinv["o_blocks"] @ rh
        gi = torch.arange(lay.head_dim // 4)
        ko = ob.reshape(lay.n_heads, lay.head_dim // 4, 4, lay.head_dim // 4, 4)[:, gi, :, gi, :]
        ko = ko.transpose(0, 1).reshape(-1, 4, 4)
        inter = self.hinv["down"].shape[0] // 4
        idx = torch.arange(inter)
        kd = self.hinv["down"].reshape(inter, 4, inter, 4)[idx, :, idx, :]
        g, hd = lay.n_kv_heads, lay.head_dim
        wv = rotate_inputs(torch.einsum("gij,gid->gjd", r, w["v"].reshape(g, hd, -1)).reshape(g * hd, -1), q)
        wo = rotate_outputs(q, w["o"]).reshape(-1, g, lay.n_rep, hd)
        wo = torch.einsum("dgrj,gjk->dgrk", wo, r).reshape(wo.shape[0], -1)
        parts = {"q": obs_error(rotate_inputs(w["q"], q), ka), "k": obs_error(rotate_inputs(w["k"], q), ka),
                 "v": obs_error(wv, ka), "o": obs_error(wo, ko),
                 "gate": obs_error(rotate_inputs(w["gate"], q), km),
                 "up": obs_error(rotate_inputs(w["up"], q), km),
                 "down": obs_error(rotate_outputs(q, w["down"]), kd)}
        return self._relative(parts)

    def _relative(self, parts: dict) -> torch.Tensor:
        if not self.ref:
            self.ref = {k: max(float(v), 1e-30) for k, v in parts.items()}
        return sum(v / self.ref[k] for k, v in parts.items())

    def loss(self):
        q, r = self.rotations()
        q, r = q.float(), r.float()
        if self.variant == "obs":
            total = self._obs(q, r)
        elif self.variant in ("share", "group_share"):
            total = self._mass_share(layer_scores(q, r, self.frozen, self.layout, self.rotation.score),
                                     self.variant == "group_share")
        else:  # warm / mix
            pm, _ = layer_pruned_mass(q, r, self.frozen, self.layout, self.rotation.score, self._pattern(),
                                      self.mass_scale)
            ent, _ = layer_entropy(q, r, self.magnitude, self.layout, "magnitude")
            if self.variant == "mix":
                self.ent0 = getattr(self, "ent0", None) or float(ent)
                total = ent / self.ent0 + pm
            else:
                total = ent if self.global_step < self.hparams.steps // 2 else pm
                if self.global_step == self.hparams.steps // 2:  # a new objective: new best
                    self.track = IterateTracker()
        return total, {}, q, r

    def configure_model(self) -> None:
        super().configure_model()
        self.magnitude = frozen_layer(self.frozen.weights, None, "magnitude", self.layout)


def decorrelation(h: torch.Tensor, q: torch.Tensor) -> float:
    """mean_j diag(QᵀHQ)_j · diag(Qᵀ(H+λI)⁻¹Q)_j (1 for uncorrelated rotated inputs)."""
    d1 = ((h @ q) * q).sum(0)
    d2 = ((damped_inverse(h) @ q) * q).sum(0)
    return float((d1 * d2).mean())


def rotate(variant: str, layer, inputs, spec: PruneSpec, steps: int, method: str, pattern: str,
           lr: float = 0.01):
    """(rotated layer or None, Q) for one variant on a norm-folded copy of ``layer``."""
    name, _, arg = variant.partition(":")
    original, layer = layer, copy.deepcopy(layer)
    fold_norms(layer, spec.adapter)
    base = dict(method=method, pattern=pattern, steps=steps, lr=lr, permute=False, guard=False)
    weights = None
    hs = collect_hessians(layer, spec.adapter, inputs, (*OBJECTIVE_STATS, "down"))
    if name == "entropy":
        module = RotationModule(**base, objective="entropy", rotation_score=arg or "pruner")
    elif name == "pruned_mass":
        module = RotationModule(**base, objective="pruned_mass", rotation_score=arg or "pruner")
    elif name == "released":
        module = RotationModule(**base, objective="entropy", reference_quirks=True)
    elif name == "weighted":
        module = RotationModule(**base, objective="pruned_mass", role_weights="measured")
        weights = measured_role_weights(layer, inputs, spec)[0]
    elif name == "reweighted":
        first = rotate("weighted", original, inputs, spec, steps, method, pattern, lr)[0]
        module = RotationModule(**base, objective="pruned_mass", role_weights="measured")
        weights = measured_role_weights(first, inputs, spec)[0]
    else:
        hinv = None
        if name == "obs":
            hinv = {k: damped_inverse(v.float()) for k, v in hs.items()}
            nh, hd = spec.layout.n_heads, spec.layout.head_dim
            idx = torch.arange(nh)
            hinv["o_blocks"] = hinv["o"].reshape(nh, hd, nh, hd)[idx, :, idx, :]
        module = Research(name, hinv, **base, objective="pruned_mass")
    dm = LayerDataModule(0, layer, spec.adapter, spec.layout, inputs,
                         {k: hs[k] for k in module.rotation.needed_stats() or ()} or None, steps, weights)
    Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu",
            **module.rotation.trainer_clipping()).fit(module, datamodule=dm)
    q, r = module.best_rotations()
    rotated, _ = merge_layer(layer, q, r, inputs, spec.adapter, spec.layout)
    return rotated, q, hs["attn_in"], module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pruner", default="sparsegpt:2:4", help="method:pattern")
    p.add_argument("--layers", type=int, nargs="+", default=[0, 8, 14, 27])
    p.add_argument("--variants", nargs="+", default=["plain", "entropy", "entropy:magnitude",
                                                      "released", "pruned_mass"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="docs/benchmarks.md block name")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    method, pattern = args.pruner.split(":", 1)
    torch.manual_seed(0)
    model, tok = load_model()
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    spec = PruneSpec(adapter, layout, method, pattern)
    windows = CalibrationDataModule(nsamples=32, seqlen=512, seed=args.seed).calibration(tok)
    inputs = capture_layer_inputs(model, adapter, windows, 8)
    layers = adapter.decoder_layers(model)
    rows = []
    start = time.perf_counter()
    for index in range(max(args.layers) + 1):
        dense_out = run_layer(layers[index], inputs)
        if index in args.layers:
            for variant in args.variants:
                t0 = time.perf_counter()
                name, _, steps = variant.partition("@")
                steps = int(steps) if steps else args.steps
                name, _, lr = name.partition("/")
                row = {"layer": index, "variant": variant}
                if name == "plain":
                    kept = copy.deepcopy(layers[index])
                else:
                    kept, q, h_attn, module = rotate(name, layers[index], inputs, spec, steps,
                                                     method, pattern, float(lr or 0.01))
                    folded = copy.deepcopy(layers[index])
                    fold_norms(folded, adapter)
                    pruner_scores = frozen_layer(
                        {r: adapter.linear(folded, r).weight for r in
                         ("q", "k", "v", "o", "gate", "up", "down")},
                        collect_hessians(folded, adapter, inputs, OBJECTIVE_STATS)
                        if method != "magnitude" else None, method, layout)
                    qq, rr = module.best_rotations()
                    row["entropy"] = float(layer_entropy(qq.float(), rr.float(), pruner_scores,
                                                         layout, method)[0])
                    row["decorrelation"] = decorrelation(h_attn.float(), q.float())
                _, report, _ = prune_candidates({"x": kept}, inputs, dense_out, spec)
                row["error"] = report["pruning_error"]
                row["seconds"] = time.perf_counter() - t0
                rows.append(row)
                print(json.dumps(row), flush=True)
        inputs = dense_out
    variants = args.variants
    named = f" --name {args.name}" if args.name else ""
    lines = [f"`python studies/layer_objectives.py --pruner {args.pruner} --layers "
             f"{' '.join(map(str, args.layers))} --variants {' '.join(variants)} --steps {args.steps} "
             f"--seed {args.seed}{named}` (dense inputs per layer, 32 × 512 embedded calibration tokens, "
             f"{time.perf_counter() - start:.0f} s). Cells: layer pruning error (entropy of the "
             "pruner's score at the rotation; decorrelation index of the q/k/v input).", "",
             "| layer | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for index in args.layers:
        cells = []
        for v in variants:
            r = next(x for x in rows if x["layer"] == index and x["variant"] == v)
            extra = f" ({r['entropy']:.0f}; {r['decorrelation']:.2f})" if "entropy" in r else ""
            cells.append(f"{r['error']:.4f}{extra}")
        lines.append(f"| {index} | " + " | ".join(cells) + " |")
    means = [sum(x["error"] for x in rows if x["variant"] == v) / len(args.layers) for v in variants]
    lines.append("| mean | " + " | ".join(f"{m:.4f}" for m in means) + " |")
    name = args.name or f"layer-objectives-{method}-{pattern.replace(':', 'of').replace('%', 'pct')}"
    write_block(args.out, name, f"Rotation objectives by layer error ({method} {pattern})",
                "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
