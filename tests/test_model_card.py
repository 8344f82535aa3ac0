"""The saved model's card: Hub front matter that huggingface_hub parses (library, tags, license and
base model when the input states them, calibration dataset, model-index) and a body that says
how to load the model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from drlightning.export.card import model_card
from drlightning.export.card_inputs import gguf_fields, hub_cache_id, input_card_fields, is_hub_id


@pytest.fixture(autouse=True)
def _empty_hub_cache(tmp_path, monkeypatch):
    """No test reads the user's Hub cache (it could hold a model card of a test's hub id)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def _results(model="someorg/tiny-model", source="embedded", r1="per_layer", **over) -> dict:
    export = {"path": "out/model", **({"r1": "shared", "untied_embeddings": False} if r1 == "shared"
                                      else {"drl_boundaries": [0, 1, 2], "drl_rotation_dtype": "float32"})}
    results = {
        "model": model, "method": "wanda", "pattern": "2:4", "steps": 20,
        "rotation": {"objective": "auto", "r1": r1, "guard": False, "role_weights": "uniform"},
        "calibration": {"source": source, "nsamples": 8, "seqlen": 64, "seed": 0, "tokens": 512},
        "ppl": {"embedded": 41.123456, "wikitext2": 55.51234567891234},
        "dense_ppl": {"embedded": 30.5, "wikitext2": 40.25},
        "zero_shot": {"tasks": {"piqa": {"metric": "acc_norm", "value": 0.62512345678912, "n": 64},
                                "winogrande": {"metric": "acc", "value": 0.5125, "n": 80}},
                      "mean": 0.56875},
        "dense_zero_shot": {"tasks": {"piqa": {"metric": "acc_norm", "value": 0.65, "n": 64},
                                      "winogrande": {"metric": "acc", "value": 0.53, "n": 80}},
                            "mean": 0.59},
        "eval": {"seqlen": 64, "max_windows": 2, "datasets": ["embedded", "wikitext2"]},
        "export": export, "versions": {"python": "3.11", "drlightning": "0.1.0", "torch": "2.5"},
        "options": {"gguf_file": None},
    }
    results.update(over)
    return results


def _card(results: dict):
    text = model_card(results, "out/model")
    return text, ModelCard(text).data


def _index(data) -> dict:
    """(dataset name, metric type) → value, from the parsed model-index."""
    return {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}


def test_front_matter_parses_with_huggingface_hub_and_carries_the_run():
    results = _results()
    text, data = _card(results)
    assert text.startswith("---\n")
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert {"drlightning", "denoiserotator", "pruning", "sparsity", "sparsity-2:4", "wanda"} <= set(data.tags)
    assert data.base_model == "someorg/tiny-model"  # a hub id: the input itself
    assert data.license is None  # nothing states one (no cached model card)
    assert data.datasets is None  # embedded calibration text is no Hub dataset
    index = _index(data)  # embedded text is no Hub dataset: in the table, not in model-index
    assert index[("WikiText-2", "perplexity")] == 55.512  # rounded
    assert index[("piqa (0-shot)", "acc_norm")] == 0.6251
    assert index[("winogrande (0-shot)", "acc")] == results["zero_shot"]["tasks"]["winogrande"]["value"]
    assert len(data.eval_results) == 3
    assert {r.task_type for r in data.eval_results} == {"text-generation"}
    wiki = next(r for r in data.eval_results if r.dataset_name == "WikiText-2")
    assert (wiki.dataset_type, wiki.dataset_config, wiki.dataset_split) == \
        ("Salesforce/wikitext", "wikitext-2-raw-v1", "test")
    assert "Python's bundled documentation" in text and "512 tokens" in text


def test_body_keeps_the_quality_table_and_per_layer_loading():
    text, data = _card(_results())
    assert "| perplexity, embedded | 30.500 | 41.123 |" in text
    assert "| piqa (acc_norm) | 0.6500 | 0.6251 |" in text
    assert f"| zero-shot mean | 0.5900 | {0.56875:.4f} |" in text
    assert "trust_remote_code=True" in text and "drlightning.load_pretrained" in text
    assert "R1 per layer" in text and "custom_code" in data.tags
    assert "drlightning 0.1.0" in text and "torch 2.5" in text


def test_shared_r1_card_loads_without_remote_code():
    text, data = _card(_results(r1="shared"))
    assert "AutoModelForCausalLM.from_pretrained('model')" in text  # the folder name, no path
    assert "no remote code" in text and "trust_remote_code" not in text
    assert "custom_code" not in data.tags and "untied" not in text
    export = {**_results(r1="shared")["export"], "untied_embeddings": True}
    text, _ = _card(_results(r1="shared", export=export))
    assert "untied" in text


def test_front_matter_is_the_first_yaml_block():
    import yaml

    text, _ = _card(_results())
    front = yaml.safe_load(text.split("---")[1])
    assert front["library_name"] == "transformers" and "sparsity-2:4" in front["tags"]
    assert front["model-index"][0]["results"][0]["metrics"][0]["type"] == "perplexity"


@pytest.mark.parametrize(("source", "datasets"), [
    ("c4", ["allenai/c4"]),
    ("wikitext2", ["Salesforce/wikitext"]),
    ("hf:someone/corpus:cfg", ["someone/corpus"]),
    ("hf:someone/corpus", ["someone/corpus"]),
    ("embedded", None),
    ("/data/private/notes.jsonl", None),
])
def test_calibration_dataset(source, datasets):
    text, data = _card(_results(source=source))
    assert data.datasets == datasets
    if source.startswith("/"):
        assert "`notes.jsonl`" in text and "a local text file" in text  # by its name only
        assert "/data/private" not in text


def test_no_zero_shot_no_accuracy_results_and_unevaluated_card():
    _, data = _card(_results(zero_shot={}, dense_zero_shot={}))
    assert {r.metric_type for r in data.eval_results} == {"perplexity"}
    text, data = _card(_results(zero_shot={}, dense_zero_shot={}, ppl={}, dense_ppl={}))
    assert data.eval_results is None and "(not evaluated)" in text


def test_local_directory_readme_gives_license_and_base_model(tmp_path):
    model = tmp_path / "my-finetune"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "README.md").write_text("---\nlicense: mit\nbase_model: someorg/base-7b\n---\n# my model\n")
    fields = input_card_fields(str(model))
    assert (fields["license"], fields["base_model"]) == ("mit", "someorg/base-7b")
    text, data = _card(_results(model=str(model)))
    assert (data.license, data.base_model) == ("mit", "someorg/base-7b")
    assert "as stated by the input's model card" in text


def test_local_directory_without_readme_gives_nothing(tmp_path):
    model = tmp_path / "plain"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "README.md").write_text("# no front matter\n")
    assert input_card_fields(str(model)) == {}
    _, data = _card(_results(model=str(model)))
    assert data.license is None and data.base_model is None


def test_hub_id_license_from_the_cached_model_card(tmp_path):
    from huggingface_hub import constants

    repo = tmp_path / "hub-cache" / "models--someorg--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "README.md").write_text(
        "---\nlicense: llama3.2\nbase_model: meta-llama/ancestor\n---\n")
    assert constants.HF_HUB_CACHE == str(tmp_path / "hub-cache")
    fields = input_card_fields("someorg/cached-model")
    assert fields["license"] == "llama3.2"
    assert fields["base_model"] == "someorg/cached-model"  # the id itself, not its ancestor
    assert hub_cache_id(repo / "snapshots" / "abc123") == "someorg/cached-model"


def test_hub_id_detection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("HuggingFaceTB/SmolLM2-135M")
    assert not is_hub_id("smollm2-135m-instruct") and not is_hub_id("./a/b")
    assert not is_hub_id("models/x.gguf") and not is_hub_id("a/b/c")
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "model").mkdir()
    assert not is_hub_id("local/model")  # an existing path is local


def test_embedded_gguf_license_matches_its_metadata():
    from drlightning.models.header import gguf_metadata
    from drlightning.models.loading import DEFAULT_MODEL, resolve_source

    try:
        location, gguf = resolve_source(DEFAULT_MODEL)
    except FileNotFoundError as err:
        pytest.skip(f"embedded GGUF not installed: {err}")
    meta = gguf_metadata(Path(location) / gguf)
    fields = input_card_fields(DEFAULT_MODEL)
    if "general.license" in meta:
        assert fields["license"] == meta["general.license"].strip().lower()
        assert "general.license" in fields["sources"]["license"]
    else:
        assert "license" not in fields
    states_a_repo = any(k.startswith(("general.source.", "general.base_model.")) or
                        k in ("general.url", "general.repo_url") for k in meta)
    if not states_a_repo:  # a name and an organization are no Hub id: nothing is invented
        assert "base_model" not in fields
    text, data = _card(_results(model=DEFAULT_MODEL))
    assert data.license == fields.get("license") and data.base_model == fields.get("base_model")
    assert f"GGUF file `{gguf}`" in text


def test_gguf_fields_map_only_what_the_metadata_states():
    assert gguf_fields({"general.name": "Foo 7B", "general.organization": "Foo"}) == {}
    own = gguf_fields({"general.license": "Apache-2.0",
                       "general.source.url": "https://huggingface.co/foo/Foo-7B-Instruct",
                       "general.base_model.count": 1,
                       "general.base_model.0.repo_url": "https://huggingface.co/foo/Foo-7B"})
    assert (own["license"], own["base_model"]) == ("apache-2.0", "foo/Foo-7B-Instruct")
    parents = gguf_fields({"general.base_model.count": 2,
                           "general.base_model.0.repo_url": "https://huggingface.co/a/one",
                           "general.base_model.1.repo_url": "https://huggingface.co/b/two"})
    assert parents["base_model"] == ["a/one", "b/two"] and "license" not in parents
    assert gguf_fields({"general.source.url": "https://github.com/foo/bar"}) == {}
    linked = gguf_fields({"general.license": "https://example.com/LICENSE"})
    assert (linked["license"], linked["license_link"]) == ("other", "https://example.com/LICENSE")
    named = gguf_fields({"general.license": "Foo Community License"})
    assert (named["license"], named["license_name"]) == ("other", "foo-community-license")


def _gguf(path, meta: dict) -> None:
    """A header-only GGUF file with string metadata."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = b"".join(s(k) + struct.pack("<I", 8) + s(v) for k, v in meta.items())
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta)) + body)


def test_gguf_file_given_as_path(tmp_path):
    gguf = tmp_path / "model.gguf"
    _gguf(gguf, {"general.license": "mit",
                 "general.source.huggingface.repository": "someorg/source-model"})
    _, data = _card(_results(model=str(gguf)))
    assert (data.license, data.base_model) == ("mit", "someorg/source-model")


def test_unreadable_inputs_give_no_license_nor_base_model(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 5) + b"\x07")
    bad_yaml = tmp_path / "bad-yaml"
    bad_yaml.mkdir()
    (bad_yaml / "config.json").write_text("{}")
    (bad_yaml / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    for spec in (str(broken), str(truncated), str(bad_yaml), str(tmp_path / "missing" / "dir"),
                 str(tmp_path / "no-config"), "", None):
        assert input_card_fields(spec) == {}, spec
        text, data = _card(_results(model=spec if spec is not None else "?"))
        assert data.license is None and data.base_model is None
        assert "the input states none" in text
    assert input_card_fields(str(tmp_path), gguf_file="absent.gguf") == {}


def test_real_run_writes_a_hub_card(finished_run):
    run = finished_run()
    results = json.loads((run / "results.json").read_text())
    card = ModelCard.load(run / "model" / "README.md")
    data = card.data
    assert data.library_name == "transformers" and "sparsity-2:4" in data.tags
    assert data.base_model is None and data.license is None  # a local tiny model states neither
    assert data.datasets is None  # calibrated on the embedded text
    assert list(results["ppl"]) == ["embedded"]
    assert not [r for r in data.eval_results or [] if r.metric_type == "perplexity"]  # embedded only
    assert "| perplexity, embedded | " in card.content
    assert len(data.eval_results or []) == len((results.get("zero_shot") or {}).get("tasks") or {})
    assert "trust_remote_code=True" in card.content and "## Loading" in card.content
