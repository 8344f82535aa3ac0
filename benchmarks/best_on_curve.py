"""Does a long per-layer rotation fit overfit its calibration windows? The objective of every
iterate measured on held-out windows (``model.best_on: held_out``'s curve), for a few layers.

    python benchmarks/best_on_curve.py --method wanda --steps 300 --nsamples 8

Each chosen layer of the embedded default model is fitted on its dense inputs (``nsamples``
windows of ``seqlen`` tokens; 4 more windows held out) with equal role weights, and the table
gives the held-out objective at the identity, at step 50 and at its best step, and the last one.
One BLAS thread.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drlightning.data.calibration import calibration_windows  # noqa: E402
from drlightning.data.corpora import load_documents  # noqa: E402
from drlightning.layer.capture import LayerInputs, capture_layer_inputs, collect_hessians, run_layer  # noqa: E402
from drlightning.lightning.layer_data import LayerDataModule  # noqa: E402
from drlightning.lightning.rotation_module import RotationModule  # noqa: E402
from drlightning.lightning.rotation_settings import RotationSettings  # noqa: E402
from drlightning.models import HeadLayout, adapter_for  # noqa: E402
from drlightning.models.loading import load_model  # noqa: E402
from drlightning.rotation import fold_norms  # noqa: E402

HELD = 4


def curve(module_settings: RotationSettings, index: int, layer, inputs: LayerInputs, adapter,
          layout) -> list[float]:
    """The held-out objective of every iterate of one layer's fit (a norm-folded copy)."""
    from lightning import Trainer

    folded = copy.deepcopy(layer)
    fold_norms(folded, adapter)
    stats = module_settings.needed_stats()
    dm = LayerDataModule(index, folded, adapter, layout, inputs,
                         collect_hessians(folded, adapter, inputs.fitted(), stats),
                         module_settings.steps,
                         held_hessians=collect_hessians(folded, adapter, inputs.held_out(), stats))
    module = RotationModule.from_settings(module_settings)
    Trainer(max_steps=module_settings.steps, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
            **module_settings.trainer_clipping()).fit(module, datamodule=dm)
    module.best_rotations()
    return module.track.held_curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="wanda", choices=("wanda", "sparsegpt"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 10, 20, 29])
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_model()
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    ids = calibration_windows(tokenizer, load_documents("embedded"), args.nsamples, args.seqlen,
                              seed=0, held_out=HELD)
    inputs = capture_layer_inputs(model, adapter, ids, 4, held_windows=HELD)
    settings = RotationSettings(method=args.method, steps=args.steps, role_weights="equal",
                                best_on="held_out")
    print(f"| layer | held-out objective at the identity | at step 50 | best (step) | last "
          f"(step {args.steps}) |\n|---|---|---|---|---|")
    for index, layer in enumerate(adapter.decoder_layers(model)):
        if index in args.layers:
            c = curve(settings, index, layer, inputs, adapter, layout)
            best = min(range(len(c)), key=c.__getitem__)
            print(f"| {index} | {c[0]:.3f} | {c[min(50, len(c) - 1)]:.3f} | {c[best]:.3f} "
                  f"({best}) | {c[-1]:.3f} |", flush=True)
        out = run_layer(layer, inputs)  # the next layer's inputs: the dense model's
        inputs = LayerInputs(out.hidden, inputs.kwargs, inputs.device, inputs.held)


if __name__ == "__main__":
    main()
