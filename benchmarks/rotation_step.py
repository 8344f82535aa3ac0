"""Rotation step time: drlightning's objective vs a plain implementation of the paper's loss.

    python benchmarks/rotation_step.py                       # CPU: smollm2 and llama3-8b sizes
    python benchmarks/rotation_step.py --sizes llama3-70b    # needs ~20 GB of memory

One step = QR of the parameters, the summed entropy loss, backward and an Adam update, on a
synthetic layer (random weights, random SPD Hessians) of the named size. Both implementations run
interleaved in the same process, so the ratio holds on a noisy machine; the reference
(``tests/reference_entropy.py``) forms QᵀMQ per linear and block-diagonal R2 densely.
Writes a table between ``<!-- rotstep-cpu:begin -->`` and ``<!-- rotstep-cpu:end -->`` (or -gpu) in
docs/benchmarks.md and the raw numbers to benchmarks/results/rotation_step.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from drlightning.models import HeadLayout
from drlightning.reporting.results import device_name
from drlightning.rotation import frozen_layer, layer_entropy, qr_orthogonal
from drlightning.rotation.objective import damped_inverse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))  # tests/reference_entropy.py: the paper-style reference stays with the tests
from docblock import write_block  # noqa: E402

from tests.reference_entropy import reference_entropy  # noqa: E402

SIZES = {
    "smollm2": HeadLayout(hidden=576, n_heads=9, n_kv_heads=3, head_dim=64, intermediate=1536),
    "llama3-8b": HeadLayout(hidden=4096, n_heads=32, n_kv_heads=8, head_dim=128, intermediate=14336),
    "llama3-70b": HeadLayout(hidden=8192, n_heads=64, n_kv_heads=8, head_dim=128, intermediate=28672),
}


def synthetic(layout: HeadLayout, method: str, device: torch.device, seed: int = 0):
    """(frozen layer, full o-input matrix) with random weights and SPD Hessians diag + low rank."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    d, hd, inter = layout.hidden, layout.head_dim, layout.intermediate
    shapes = {"q": (layout.n_heads * hd, d), "k": (layout.n_kv_heads * hd, d),
              "v": (layout.n_kv_heads * hd, d), "o": (d, layout.n_heads * hd),
              "gate": (inter, d), "up": (inter, d), "down": (d, inter)}
    weights = {r: (torch.randn(*s, generator=g) * 0.02).to(device) for r, s in shapes.items()}

    def hess(n: int) -> torch.Tensor:
        u = torch.randn(n, 64, generator=g).to(device)
        return torch.diag(torch.rand(n, generator=g).to(device) + 0.1) + u @ u.T / 64

    hessians = None
    m_o = None
    if method != "magnitude":
        hessians = {"attn_in": hess(d), "o": hess(layout.n_heads * hd), "mlp_in": hess(d)}
        m_o = hessians["o"] if method == "wanda" else damped_inverse(hessians["o"])
    frozen = frozen_layer(weights, hessians, method, layout)
    return frozen, m_o


def make_step(kind: str, frozen, m_o, layout: HeadLayout, method: str, device: torch.device,
              blocks: int = 1, low_memory: bool = False, bf16: bool = False):
    """A closure doing one optimisation step of ``kind`` ("fast" or "reference"); ``blocks`` > 1
    learns R1 as that many diagonal blocks, ``low_memory`` checkpoints per linear (fast only)."""
    d = layout.hidden
    a = torch.nn.Parameter(torch.eye(d, device=device) if blocks == 1 else
                           torch.eye(d // blocks, device=device).repeat(blocks, 1, 1))
    b = torch.nn.Parameter(torch.eye(layout.head_dim, device=device).repeat(layout.n_kv_heads, 1, 1))
    opt = torch.optim.Adam([a, b], lr=0.01)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        if kind == "fast":
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss, _ = layer_entropy(qr_orthogonal(a).float(), qr_orthogonal(b).float(), frozen,
                                        layout, method, low_memory=low_memory)
        else:
            loss = reference_entropy(a, b, frozen, m_o, layout, method)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([a, b], 1.0)
        opt.step()
        return float(loss.detach())

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def variants(blocks: list[int], device: torch.device) -> dict[str, tuple]:
    """name → (kind, R1 blocks, low_memory, bf16 matmuls); bf16 only on GPUs (CPUs without bf16
    units would only measure emulation)."""
    out = {"reference": ("reference", 1, False, False)}
    out.update({f"k={k}": ("fast", k, False, False) for k in blocks})
    out["k=1, low_memory"] = ("fast", 1, True, False)
    if device.type == "cuda":
        out["k=1, bf16 matmuls"] = ("fast", 1, False, True)
    return out


def _rss_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def cpu_step_memory(size: str, method: str, variant: tuple) -> float:
    """GiB the first step adds to the resident set (peak RSS − RSS with the frozen layer built),
    measured in a fresh process so earlier variants do not hide it."""
    here = str(Path(__file__).parent)
    code = (f"import json, sys; sys.path.insert(0, {here!r}); import rotation_step as b; "
            f"print(json.dumps(b._child({size!r}, {method!r}, {list(variant)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(size: str, method: str, variant: list) -> float:
    kind, k, low, bf16 = variant
    layout = SIZES[size]
    frozen, m_o = synthetic(layout, method, torch.device("cpu"))
    step = make_step(kind, frozen, m_o, layout, method, torch.device("cpu"), k, low, bf16)
    base = _rss_gib("VmRSS")
    step()
    return _rss_gib("VmHWM") - base


def measure(size: str, method: str, steps: int, device: torch.device, blocks: list[int],
            memory: bool) -> list[dict]:
    """Median seconds per step (interleaved) of each variant, and its step memory."""
    layout = SIZES[size]
    frozen, m_o = synthetic(layout, method, device)
    spec = variants(blocks, device)
    fns = {name: make_step(kind, frozen, m_o, layout, method, device, *rest)
           for name, (kind, *rest) in spec.items()}
    times: dict = {k: [] for k in fns}
    peak: dict = {}
    for name, fn in fns.items():  # warm-up (and the GPU peak memory of one step)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        peak[name] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if device.type == "cpu" and memory:
        peak = {name: cpu_step_memory(size, method, spec[name]) for name in spec}
    for _ in range(steps):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    ref = statistics.median(times["reference"])
    return [{"size": size, "method": method, "variant": name, "steps": steps,
             "s_per_step": statistics.median(times[name]), "reference_s": ref,
             "speedup": ref / statistics.median(times[name]), "memory_gib": peak[name],
             "device": device_name(device)} for name in spec]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["smollm2", "llama3-8b"], choices=list(SIZES))
    p.add_argument("--methods", nargs="+", default=["sparsegpt"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    p.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="R1 block counts timed for drlightning (1 = dense R1, the paper's)")
    p.add_argument("--no-memory", action="store_true", help="skip the CPU step-memory processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "rotation_step.json")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        for method in args.methods:
            for row in measure(size, method, args.steps, device, args.blocks, not args.no_memory):
                print(json.dumps(row), flush=True)
                rows.append(row)
    tag = "gpu" if device.type == "cuda" else "cpu"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(args.json.read_text()) if args.json.is_file() else {}
    saved[tag] = rows
    args.json.write_text(json.dumps(saved, indent=2) + "\n")
    mem = ("peak GPU memory of one step, GiB (allocated)" if tag == "gpu" else
           "step memory, GiB (resident-set growth of a fresh process during one step, on top of "
           "the frozen layer)")
    lines = [f"Device: {rows[0]['device']}, torch {torch.__version__}, float32, median of "
             f"{args.steps} interleaved steps (QR + loss + backward + Adam) on a synthetic layer. "
             f"Command: `python benchmarks/rotation_step.py {' '.join(sys.argv[1:])}`. "
             f"Variants: the paper-style reference (dense R1, QᵀMQ formed per linear); drlightning "
             f"with R1 as k diagonal blocks (k=1 is the paper's dense R1); k=1 with "
             f"`model.low_memory` (per-linear checkpointing). Memory column: {mem}.", "",
             "| layer size | method | variant | s/step | reference s/step | speed-up | memory GiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = "–" if r["memory_gib"] is None else f"{r['memory_gib']:.2f}"
        lines.append(f"| {r['size']} | {r['method']} | {r['variant']} | {r['s_per_step']:.4f} | "
                     f"{r['reference_s']:.4f} | {r['speedup']:.2f}× | {m} |")
    text = "\n".join(lines)
    print(text)
    write_block(args.out, f"rotstep-{tag}", f"Rotation step time ({tag.upper()})", text)


if __name__ == "__main__":
    main()
