"""TensorBoard summary scalars, importance pictures (valid PNG) and the pruning-error report."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from drlightning.cli import DRLightningCLI
from drlightning.reporting.pictures import importance_png, kept_mask, normalised

from .tiny import fit_args, save_tiny_dir


def test_normalisation_and_kept_mask():
    s = torch.tensor([[1.0, 3.0, 0.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    p = normalised(s, "q")
    assert torch.allclose(p.sum(1), torch.ones(2, dtype=torch.float64))
    assert kept_mask(p, "q", 0.5)[0].tolist() == [False, True, False, True]
    assert torch.allclose(normalised(s, "down").sum(0)[:2], torch.ones(2, dtype=torch.float64))


def test_importance_png_decodes():
    g = torch.Generator().manual_seed(0)
    png = importance_png(torch.rand(32, 48, generator=g), torch.rand(32, 48, generator=g) ** 4,
                         "o", "test")
    img = Image.open(io.BytesIO(png))
    img.verify()
    assert img.format == "PNG" and img.size[0] > 200


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("mon")
    src = save_tiny_dir(base / "tiny", "mistral")
    DRLightningCLI(args=fit_args(src, base / "run", steps=15, extra=(
        "--run.monitor.tensorboard", "true", "--run.monitor.picture_layers", "[0, 1]",
        "--run.monitor.picture_role", "v",
        "--run.monitor.unrotated_error", "true")))
    return base / "run"


def test_run_draws_pictures_and_logs_summary_scalars(run):
    for layer in (0, 1):
        png = run / "pictures" / f"layer_{layer:02d}_v.png"
        assert png.stat().st_size > 1000
        Image.open(png).verify()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard" / "summary"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    for key in ("layer/best_loss", "layer/pruning_error", "layer/orthogonality_error",
                "layer/best_step", "layer/seconds", "layer/pruning_error_unrotated",
                "model/ppl_embedded", "sparsity/down"):
        assert key in tags["scalars"], key
    assert [e.step for e in acc.Scalars("layer/pruning_error")] == [0, 1]
    assert "importance/v" in tags["images"] and len(acc.Images("importance/v")) == 2
    assert any((run / "tensorboard").glob("layer_00/events*"))


def test_objective_curves_have_every_step_from_step_0(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard" / "layer_00"))
    acc.Reload()
    curves = [tag for tag in acc.Tags()["scalars"] if tag.endswith("/total")]
    assert curves, acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars(curves[0])] == list(range(15))  # steps=15


def test_layer_runs_hold_no_placeholder_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for layer in ("layer_00", "layer_01"):
        acc = EventAccumulator(str(run / "tensorboard" / layer))
        acc.Reload()
        scalars = acc.Tags()["scalars"]
        assert scalars and "epoch" not in scalars and "hp_metric" not in scalars, scalars


def test_pruning_error_is_reported_per_layer(run):
    res = json.loads((run / "results.json").read_text())
    errors = [layer["pruning_error"] for layer in res["layers"]]
    assert all(0 < e < 10 for e in errors)
    plain = [layer["pruning_error_unrotated"] for layer in res["layers"]]
    assert all(0 < e < 10 for e in plain) and plain != errors


def test_frozen_weights_do_not_alias_the_layer():
    from drlightning.lightning.layer_data import LayerDataModule
    from drlightning.models import HeadLayout, adapter_for

    from .tiny import tiny_model

    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    layer = adapter.decoder_layers(model)[0]
    dm = LayerDataModule(0, layer, adapter, HeadLayout.from_config(model.config), None, None, 1)
    frozen = dm.frozen_weights()
    before = frozen["v"].clone()
    adapter.linear(layer, "v").weight.data.zero_()  # what pruning does in place
    assert torch.equal(frozen["v"], before) and before.abs().sum() > 0
