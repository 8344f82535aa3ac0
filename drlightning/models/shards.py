"""Layer-by-layer loading from safetensors shards: a model skeleton whose decoder layers stay on
the ``meta`` device until they are needed (host memory ≈ one layer + embeddings, not the model)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .adapters import ArchitectureAdapter, adapter_for
from .expert_layout import to_memory
from .loading import (
    DEFAULT_MODEL,
    DTYPES,
    check_context_length,
    check_vocabulary,
    check_weight_file,
    float64_norms,
    index_weight_map,
    read_config,
    resolve_source,
)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class ShardedCheckpoint:
    """Tensor name → safetensors file of a checkpoint directory (one file or an index of shards)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        weight_map = index_weight_map(self.dir)
        if weight_map is None and not (self.dir / SINGLE).is_file():
            raise FileNotFoundError(
                f"layer-by-layer loading needs safetensors weights ({SINGLE} or {INDEX}) in "
                f"{self.dir}; found neither")
        self.files: list[str] = sorted(set(weight_map.values())) if weight_map is not None else [SINGLE]
        """The checkpoint's weight files (names in ``dir``)."""
        missing = [f for f in self.files if not (self.dir / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.dir}: shard files named in {INDEX} are missing: {missing}")
        for name in self.files:  # whole files, before hours of work on them
            check_weight_file(self.dir / name)
        if weight_map is None:
            from safetensors import safe_open

            with safe_open(str(self.dir / SINGLE), framework="pt") as fh:
                weight_map = dict.fromkeys(fh.keys(), SINGLE)
        self.weight_map: dict[str, str] = weight_map

    def names(self, prefix: str = "") -> list[str]:
        """Tensor names starting with ``prefix``."""
        return [n for n in self.weight_map if n.startswith(prefix)]

    def load(self, names: list[str], dtype: torch.dtype | None = None,
             device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The named tensors (read shard by shard), cast to ``dtype``; NaN/Inf is an error."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = defaultdict(list)
        for name in names:
            by_file[self.weight_map[name]].append(name)
        out = {}
        for file, group in by_file.items():
            with safe_open(str(self.dir / file), framework="pt", device="cpu") as fh:
                for name in group:
                    t = fh.get_tensor(name)
                    if t.is_floating_point():
                        if not torch.isfinite(t).all():
                            raise ValueError(f"model weight {name} ({self.dir / file}) contains "
                                             "NaN or Inf values")
                        t = t.to(dtype) if dtype is not None else t
                    out[name] = t.to(device)
        return out


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every new parameter on the ``meta`` device (buffers, e.g. rotary tables, stay real)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"),
                                                    requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def checkpoint_dir(source: str, gguf_file: str | None = None) -> Path:
    """The local safetensors directory of ``source`` (a hub id is downloaded to the cache first)."""
    if source == DEFAULT_MODEL or source.endswith(".gguf") or gguf_file is not None:
        raise ValueError(f"run.launch.layerwise needs a safetensors model directory; {source!r} is a GGUF "
                         "file, which is loaded whole (save it once with save_pretrained, or use "
                         "run.launch.layerwise=false)")
    location, _ = resolve_source(source)
    path = Path(os.path.expanduser(location))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(location, allow_patterns=["*.json", "*.safetensors",
                                                                "*.model", "*.txt"]))
    except Exception as err:  # noqa: BLE001 - offline, gated, missing: say what was asked
        raise FileNotFoundError(f"could not fetch {source!r} from the hub ({err}); give a local "
                                "directory") from err


def base_config(directory: Path):
    """The base architecture's config of a saved drlightning output (None for other models).

    Its boundary rotations are applied by the layer-by-layer evaluation, so the skeleton is the
    plain base model (no d × d identity buffers per boundary).
    """
    from transformers import CONFIG_MAPPING

    cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if not str(cfg.get("model_type", "")).startswith("drlightning_"):
        return None
    base = cfg["base_model_type"]
    fields = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "auto_map")}
    return CONFIG_MAPPING[base].from_dict(fields)


class LayerwiseModel:
    """A causal LM whose embeddings, final norm and head are loaded and whose layers are not.

    ``load(i)`` materialises decoder layer ``i`` from the shards (as ``layers[i]``), ``release(i)``
    sends it back to ``meta``. Everything outside the decoder layers is ordinary and on ``device``.
    """

    def __init__(self, source: str, *, dtype: str = "float32", device: torch.device | str = "cpu",
                 gguf_file: str | None = None, trust_remote_code: bool = False,
                 attn_implementation: str = "sdpa") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.initialization import no_init_weights

        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
        self.dir = checkpoint_dir(source, gguf_file)
        self.checkpoint = ShardedCheckpoint(self.dir)
        config = base_config(self.dir) or read_config(str(self.dir), source, trust_remote_code)
        self.adapter: ArchitectureAdapter = adapter_for(config)
        check_context_length(config)
        self.tokenizer = AutoTokenizer.from_pretrained(self.dir, trust_remote_code=trust_remote_code)
        check_vocabulary(config, self.tokenizer)
        self.dtype, self.device = DTYPES[dtype], torch.device(device)
        with parameters_on_meta(), no_init_weights():
            self.model = AutoModelForCausalLM.from_config(
                config, dtype=self.dtype, trust_remote_code=trust_remote_code,
                attn_implementation=attn_implementation)
        if self.dtype == torch.float64:
            float64_norms(self.model)
        self.model.eval()
        self.layer_prefix = f"{self.adapter.layers}."
        self._load_outer()

    @property
    def layers(self) -> nn.ModuleList:
        return self.adapter.decoder_layers(self.model)

    def _load_outer(self) -> None:
        names = [n for n in self.checkpoint.names() if not n.startswith(self.layer_prefix)]
        expected = {n for n, _ in self.model.named_parameters(remove_duplicate=False)
                    if not n.startswith(self.layer_prefix)}
        tensors = self.checkpoint.load([n for n in names if n in expected], self.dtype, self.device)
        self.model.load_state_dict(tensors, strict=False, assign=True)
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()
        for name, buf in self.model.named_buffers():
            if not name.startswith(self.layer_prefix):
                buf.data = buf.data.to(self.device)
        left = [n for n, p in self.model.named_parameters(remove_duplicate=False)
                if p.is_meta and not n.startswith(self.layer_prefix)]
        if left:
            raise ValueError(f"{self.dir}: the checkpoint lacks {left}")

    def layer_tensors(self, index: int,
                      checkpoint: ShardedCheckpoint | None = None) -> dict[str, torch.Tensor]:
        """Layer ``index``'s weights from the shards (of ``checkpoint``, default: the source),
        keyed as in the layer's state_dict (Mixture-of-Experts experts saved one by one are
        stacked into the layer's 3-D parameters)."""
        checkpoint = checkpoint or self.checkpoint
        prefix = f"{self.layer_prefix}{index}."
        names = checkpoint.names(prefix)
        if not names:
            raise ValueError(f"{checkpoint.dir} holds no tensors of layer {index} ({prefix}*)")
        tensors = checkpoint.load(names, self.dtype, self.device)
        return to_memory(self.adapter, {k.removeprefix(prefix): v for k, v in tensors.items()})

    def load(self, index: int, tensors: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """Materialise layer ``index`` (from the shards, or from ``tensors``), strictly."""
        layer = self.layers[index]
        if tensors is None and not any(p.is_meta for p in layer.parameters()):
            return layer
        state = self.layer_tensors(index) if tensors is None else \
            {k: v.to(self.device) for k, v in tensors.items()}
        layer.load_state_dict(state, strict=True, assign=True)
        return layer

    def release(self, index: int, layer: nn.Module | None = None) -> None:
        """Put layer ``index`` (or ``layer``, e.g. the pruned one) back on ``meta`` in the model.

        A rotated layer (a wrapper with ``inner``) is unwrapped; its rotation lives in the run state.
        """
        target = self.layers[index] if layer is None else layer
        target = getattr(target, "inner", target)
        self.layers[index] = target.to("meta")
