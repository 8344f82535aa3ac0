"""Logit error of the merged boundary rotations stored in float32 vs in the model dtype.

    python studies/boundary_dtype.py

Random orthogonal R1/R2 (the worst case: learned rotations are closer to the identity) are merged
into every layer of the embedded default model; the boundaries Q_{l+1}ᵀQ_l are then stored in each
candidate dtype. Reported: relative logit error ‖logits − dense_fp32‖ / ‖dense_fp32‖ on evaluation
windows, next to the error of the plain (unrotated) model in the same dtype. Writes a table between
``<!-- boundary:begin -->`` and ``<!-- boundary:end -->`` in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from drlightning.data import load_eval_text, tokenize_text
from drlightning.export import install_boundaries
from drlightning.models import HeadLayout, adapter_for, load_model
from drlightning.reporting.results import device_name
from drlightning.rotation import RotatedLayer, fold_norms, merge_rotations, random_orthogonal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # docblock.py, shared with the benchmarks
from docblock import write_block  # noqa: E402


def rotate_randomly(model, seed: int = 0) -> None:
    """Fold norms and merge random orthogonal R1/R2 into every layer (function-preserving)."""
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    gen = torch.Generator().manual_seed(seed)
    layers = adapter.decoder_layers(model)
    for i, layer in enumerate(layers):
        fold_norms(layer, adapter)
        q = random_orthogonal(layout.hidden, generator=gen).float()
        r = random_orthogonal(layout.head_dim, (layout.n_kv_heads,), generator=gen).float()
        merge_rotations(layer, adapter, layout, q, r)
        layers[i] = RotatedLayer(layer, q)


@torch.no_grad()
def logits(model, windows: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(w[None], use_cache=False).logits.double() for w in windows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    start = time.perf_counter()
    base, tok = load_model()
    ids = tokenize_text(tok, load_eval_text("embedded"))[0]
    windows = ids[: args.windows * args.seqlen].reshape(args.windows, args.seqlen)
    ref = logits(base, windows)

    def err(model) -> float:
        return ((logits(model, windows) - ref).norm() / ref.norm()).item()

    rows = []
    for model_dtype in (torch.float32, torch.bfloat16):
        plain = copy.deepcopy(base).to(model_dtype)
        plain_err = err(plain)
        rotated = copy.deepcopy(base)
        rotate_randomly(rotated)
        adapter = adapter_for(rotated.config)
        choices = ["float32"] if model_dtype == torch.float32 else ["float32", "bfloat16"]
        for store in choices:
            model = copy.deepcopy(rotated).to(model_dtype)
            for layer in adapter.decoder_layers(model):  # .to() also cast the wrapper rotations
                layer.rotation.data = layer.rotation.data.float()
            install_boundaries(model, adapter, store)
            rows.append((str(model_dtype).removeprefix("torch."), store, plain_err, err(model)))
    table = [f"SmolLM2-135M-Instruct with random R1/R2 in every "
             f"layer, {args.windows}×{args.seqlen} embedded evaluation tokens, reference: dense "
             f"float32 logits; {device_name(torch.device('cpu'))}, {time.perf_counter() - start:.0f} s. "
             "Command: `python studies/boundary_dtype.py`.", "",
             "| model dtype | boundary dtype | plain model error | rotated model error |",
             "|---|---|---|---|"]
    table += [f"| {m} | {s} | {pe:.2e} | {re_:.2e} |" for m, s, pe, re_ in rows]
    text = "\n".join(table)
    print(text)
    write_block(args.out, "boundary", "Boundary rotation storage dtype", text)


if __name__ == "__main__":
    main()
