"""benchmarks/decode_speed.py builds the variants it claims to time: the same dense weights, exact 2:4
in every decoder linear of the sparse ones (embeddings and lm_head dense), one boundary matrix per
layer boundary in the requested dtype for the per-layer variants; and it times exactly the asked
number of new tokens."""

import sys
from pathlib import Path

import torch

from tests.tiny import tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import decode_speed  # noqa: E402


def is_2of4(w: torch.Tensor) -> bool:
    return bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def test_variants_have_the_timed_structure():
    config = tiny_config("llama")
    variants = decode_speed.build_variants(config, torch.device("cpu"), torch.bfloat16, False)
    assert len(variants) == 4  # dense, 2:4, per-layer float32 boundaries, per-layer bf16 boundaries
    models = {name: build() for name, build in variants.items()}
    dense, sparse, rot32, rot16 = models.values()
    for d, s in zip(decode_speed.decoder_linears(dense), decode_speed.decoder_linears(sparse),
                    strict=True):
        assert not is_2of4(d.weight) and is_2of4(s.weight)
        kept = s.weight != 0
        assert torch.equal(s.weight[kept], d.weight[kept])
    assert torch.equal(sparse.lm_head.weight, dense.lm_head.weight)
    for rot, dtype in ((rot32, torch.float32), (rot16, torch.bfloat16)):
        assert rot.drl_rotations.boundaries == [0, 1, 2]
        m = rot.drl_rotations.matrix(1)
        assert m.dtype == dtype
        eye = torch.eye(m.shape[0], dtype=torch.float64)
        assert torch.allclose(m.double() @ m.double().T, eye, atol=2e-2)
        for r, s in zip(decode_speed.decoder_linears(rot), decode_speed.decoder_linears(sparse),
                        strict=True):
            assert torch.equal(r.weight, s.weight)


def test_tokens_per_second_counts_the_new_tokens(monkeypatch):
    config = tiny_config("llama")
    model = decode_speed.build_variants(config, torch.device("cpu"), torch.float32, False)["dense"]()
    calls = []
    original = model.generate

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out.shape)
        return out

    monkeypatch.setattr(model, "generate", counting)
    rate = decode_speed.tokens_per_second(model, batch=2, prompt=5, new_tokens=3, repeats=2,
                                          device=torch.device("cpu"))
    assert rate > 0
    assert calls == [torch.Size([2, 8])] * 3  # warm-up + 2 timed runs, each 3 new tokens
