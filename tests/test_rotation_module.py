"""The per-layer LightningModule: loss goes down, Q stays orthogonal, best iterate is kept."""

from __future__ import annotations

import pytest
import torch
from lightning import Trainer

from drlightning.layer.capture import LayerInputs
from drlightning.lightning.layer_data import LayerDataModule
from drlightning.lightning.rotation_module import RotationModule
from drlightning.models import HeadLayout, adapter_for
from drlightning.rotation import frozen_layer, layer_entropy, orthogonality_error

from .tiny import rotation_trainer, tiny_model


def layer_datamodule(method: str, steps: int) -> LayerDataModule:
    model = tiny_model("llama")
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    layer = adapter.decoder_layers(model)[0]
    g = torch.Generator().manual_seed(0)

    def hess(n):
        x = torch.randn(256, n, generator=g)
        return 2 * x.T @ x / 256

    hessians = {"attn_in": hess(layout.hidden), "o": hess(layout.n_heads * layout.head_dim),
                "mlp_in": hess(layout.hidden), "down": hess(layout.intermediate)}
    return LayerDataModule(0, layer, adapter, layout, LayerInputs([]), hessians, steps)


def fit(method: str, steps: int, **kw) -> RotationModule:
    module = RotationModule(method=method, pattern="2:4", steps=steps, **kw)
    rotation_trainer(module).fit(module, datamodule=layer_datamodule(method, steps))
    return module


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_loss_goes_down_and_q_stays_orthogonal(method):
    module = fit(method, 30)
    report = module.report()
    assert report["best_loss"] < report["initial_loss"] - 1e-3
    assert report["orthogonality_error"] <= 1e-5
    q, r = module.best_rotations()
    assert orthogonality_error(q) <= 1e-5 and orthogonality_error(r) <= 1e-5
    # the best iterate really has the best loss
    total = module.loss()[0].item()
    assert report["best_loss"] <= total + 1e-4


def test_best_iterate_is_kept_when_steps_overshoot():
    """With a huge learning rate the loss jumps around; the kept rotation has the lowest loss seen."""

    class Recording(RotationModule):
        seen: list[float] = []

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.seen.append(loss.item())
            return loss

    module = Recording(method="magnitude", pattern="2:4", steps=25, lr=5.0, objective="entropy")
    rotation_trainer(module).fit(module, datamodule=layer_datamodule("magnitude", 25))
    q, r = module.best_rotations()
    seen = module.seen + [module.loss()[0].item()]
    assert len(module.seen) == 25
    assert module.track.best_loss == pytest.approx(min(seen), rel=1e-6)
    assert module.track.best_step == seen.index(min(seen))
    dm = layer_datamodule("magnitude", 25)
    again = layer_entropy(q, r, frozen_layer(dm.frozen_weights(), None, "magnitude", dm.layout),
                          dm.layout, "magnitude")[0]
    assert again.item() == pytest.approx(min(seen), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"method": "obs"}, "allowed: magnitude, wanda, sparsegpt"), ({"steps": -1}, "steps=-1"),
     ({"lr": 0.0}, "lr=0.0"), ({"pattern": "5:4"}, "5:4"), ({"pattern": 1.5}, "1.5")],
)
def test_bad_hyperparameters_fail_early(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RotationModule(**kwargs)


def test_checkpoint_holds_only_the_rotation_parameters():
    module = fit("wanda", 2)
    assert set(module.state_dict()) == {"A", "B"}


FROZEN_BUFFERS = {f"frozen_{n}" for n in ("q", "k", "v", "o", "gate", "up", "down", "m_attn",
                                           "m_mlp", "m_o_blocks", "c_down")}


class Placement(RotationModule):
    """Records where the frozen tensors are while Lightning trains the module."""

    def training_step(self, batch, batch_idx):
        frozen = self.frozen
        self.seen = {(t.device, t.dtype) for t in (*frozen.weights.values(), frozen.m_attn,
                                                   frozen.m_mlp, frozen.m_o_blocks, frozen.c_down)}
        return super().training_step(batch, batch_idx)


def fit_placement(accelerator: str) -> Placement:
    module = Placement(method="sparsegpt", pattern="2:4", steps=2, objective="entropy")
    trainer = Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator=accelerator,
                      **module.rotation.trainer_clipping())
    trainer.fit(module, datamodule=layer_datamodule("sparsegpt", 2))
    return module


def test_frozen_tensors_are_non_persistent_buffers_that_move_with_the_module():
    """Lightning places them (Module.to moves buffers); they are never checkpointed."""
    module = fit_placement("cpu")
    assert module.seen == {(module.device, torch.float32)}
    buffers = dict(module.named_buffers())
    assert set(buffers) == FROZEN_BUFFERS and not FROZEN_BUFFERS & set(module.state_dict())
    assert module.frozen.weights["q"] is buffers["frozen_q"]
    module.to("meta")
    assert {t.device.type for t in (*module.frozen.weights.values(), module.frozen.m_o_blocks)} == {"meta"}
    assert module._final_checked  # the final iterate was evaluated in on_train_end
    with pytest.raises(RuntimeError, match="configure_model"):
        _ = RotationModule().frozen


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_frozen_tensors_follow_the_module_to_the_gpu_and_back():
    """Trained on the GPU (datamodule tensors on the CPU); the final iterate is evaluated there
    before Lightning's teardown moves the module to the CPU; importance still works afterwards."""
    module = fit_placement("gpu")
    assert {dev.type for dev, _ in module.seen} == {"cuda"}
    assert module.device.type == "cpu" and module.frozen.weights["q"].device.type == "cpu"
    q, r = module.best_rotations()
    assert q.device.type == "cuda" and r.device.type == "cuda"
    before, after = module.importance("o")
    assert before.shape == after.shape


def test_factory_trainer_clips_the_gradient_norm_at_grad_clip(tmp_path):
    from lightning.pytorch.utilities import GradClipAlgorithmType

    from drlightning.pipeline.options import MonitorOptions, RunOptions
    from drlightning.pipeline.trainers import default_trainer_factory

    opts = RunOptions(monitor=MonitorOptions(tensorboard=False, progress=False))
    module = RotationModule(method="wanda", steps=3, grad_clip=0.25)
    for base in (None, {"gradient_clip_val": None, "gradient_clip_algorithm": None},
                 {"gradient_clip_val": 0.25, "gradient_clip_algorithm": "norm"}):
        trainer = default_trainer_factory(opts, tmp_path, base)(0, module.rotation)
        assert trainer.gradient_clip_val == 0.25
        assert trainer.gradient_clip_algorithm == GradClipAlgorithmType.NORM
    with pytest.raises(ValueError, match=r"gradient_clip_val=0\.5 differs from model\.grad_clip=0\.25"):
        default_trainer_factory(opts, tmp_path, {"gradient_clip_val": 0.5})(0, module.rotation)
    with pytest.raises(ValueError, match="gradient_clip_algorithm='value'"):
        default_trainer_factory(opts, tmp_path, {"gradient_clip_algorithm": "value"})(0, module.rotation)


def test_bf16_mixed_precision_trains_with_float32_loss():
    module = RotationModule(method="sparsegpt", pattern="2:4", steps=5)
    rotation_trainer(module, precision="bf16-mixed").fit(
        module, datamodule=layer_datamodule("sparsegpt", 5))
    assert module.A.dtype == torch.float32
    report = module.report()
    assert report["best_loss"] < report["initial_loss"]
    assert report["orthogonality_error"] <= 1e-5


def test_low_memory_training_follows_the_same_path():
    """model.low_memory only changes how the gradient is computed: same losses, same rotations."""
    plain, low = fit("sparsegpt", 10), fit("sparsegpt", 10, low_memory=True)
    assert low.report()["best_loss"] == pytest.approx(plain.report()["best_loss"], rel=1e-5)
    torch.testing.assert_close(low.best_rotations()[0], plain.best_rotations()[0], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"low_memory='yes' must be true or false"):
        RotationModule(low_memory="yes")
