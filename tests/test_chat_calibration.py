"""Calibration for instruct models: chat JSONL conversations rendered with the tokenizer's chat
template (``data.chat_template``), their windows, errors, and the recorded protocol."""

from __future__ import annotations

import gzip
import json
import re

import pytest
import torch
from transformers import AutoTokenizer

from drlightning.cli import main
from drlightning.data import (
    calibration_windows,
    check_chat_source,
    embedded_text,
    load_conversations,
    render_chats,
    tokenize_text,
)
from drlightning.lightning.calibration import CalibrationDataModule
from drlightning.lightning.rotation_settings import RotationSettings
from drlightning.pipeline.options import RunOptions
from drlightning.pipeline.preflight import check_enough_text, check_local_text
from drlightning.pipeline.setup import fingerprint
from drlightning.pipeline.state import RunState, describe_differences

from .tiny import fit_args, save_tiny_dir, tiny_tokenizer

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
MARKERS = ("<|user|>", "<|assistant|>")


@pytest.fixture(scope="module")
def chat_tok():
    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def conversations(n: int = 6, turns: int = 6, words: int = 4) -> list[list[dict]]:
    """``n`` conversations of ``turns`` alternating user/assistant messages of embedded text."""
    text = embedded_text("evaluation").split()
    out, k = [], 0
    for _ in range(n):
        messages = []
        for t in range(turns):
            messages.append({"role": ("user", "assistant")[t % 2], "content": " ".join(text[k:k + words])})
            k += words
        out.append(messages)
    return out


def write_chats(path, convs, bare_every: int = 2) -> None:
    """One conversation per line (every ``bare_every``-th as a bare message list), a blank line
    between two of them."""
    lines = [json.dumps(m if i % bare_every == 1 else {"messages": m, "id": i}) for i, m in enumerate(convs)]
    lines.insert(1, "")
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


# ---------------------------------------------------------------- loading and rendering
@pytest.mark.parametrize("name", ["chats.jsonl", "chats.JSONL.gz"])
def test_conversations_round_trip_both_record_forms(tmp_path, name):
    convs = conversations()
    write_chats(tmp_path / name, convs)
    assert load_conversations(str(tmp_path / name)) == convs


def test_folder_of_jsonl_files_is_read_in_order(tmp_path):
    convs = conversations()
    write_chats(tmp_path / "b.jsonl", convs[3:])
    (tmp_path / "sub").mkdir()
    write_chats(tmp_path / "sub" / "a.jsonl", convs[:3])
    assert load_conversations(str(tmp_path)) == convs[3:] + convs[:3]  # sorted paths: b.jsonl, sub/a.jsonl


def test_rendered_documents_are_the_chat_template_output(chat_tok):
    convs = conversations()
    docs = render_chats(chat_tok, convs)
    assert docs == [chat_tok.apply_chat_template(m, tokenize=False) for m in convs]
    first = convs[0][0]
    assert docs[0].startswith(f"<|user|>{first['content']}\n<|assistant|>")
    assert all(doc.count("<|user|>") == 3 and doc.count("<|assistant|>") == 3 for doc in docs)


def test_windows_come_from_the_rendered_conversations(tmp_path, chat_tok):
    convs = conversations()
    write_chats(tmp_path / "chats.jsonl", convs)
    data = CalibrationDataModule(str(tmp_path / "chats.jsonl"), nsamples=8, seqlen=48, seed=3,
                                 batch_size=4, chat_template=True)
    windows = data.calibration(chat_tok, max_length=128)
    assert windows.shape == (8, 48) and windows.dtype == torch.long
    assert data.calibration(chat_tok) is windows  # sampled once
    docs = render_chats(chat_tok, convs)
    assert data.documents(chat_tok) == docs
    # exactly the plain-text windows of the rendered documents ...
    assert torch.equal(windows, calibration_windows(chat_tok, docs, 8, 48, seed=3, add_special_tokens=False))
    # ... each a contiguous slice of one rendered conversation, holding a role marker
    streams = [tokenize_text(chat_tok, d, add_special_tokens=False)[0].tolist() for d in docs]
    for w in windows.tolist():
        assert any(any(s[i:i + 48] == w for i in range(len(s) - 47)) for s in streams)
        assert any(marker in chat_tok.decode(w) for marker in MARKERS)
    assert [b.shape for b in data.train_dataloader()] == [(4, 48), (4, 48)]


def test_rendered_special_tokens_are_not_added_twice(tmp_path):
    """A template that writes the BOS itself, with a tokenizer that also adds one: the chat text
    is tokenised without adding special tokens, so no window holds two BOS in a row."""
    from tokenizers.processors import TemplateProcessing

    tok = tiny_tokenizer()
    bos = tok.convert_tokens_to_ids("<eos>")
    tok._tokenizer.post_processor = TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", bos)])
    assert tok("x")["input_ids"][0] == bos  # plain text gets one
    tok.chat_template = "<eos>" + TEMPLATE
    convs = conversations(n=1, turns=2, words=12)
    n = tokenize_text(tok, render_chats(tok, convs)[0], add_special_tokens=False).shape[1]
    write_chats(tmp_path / "c.jsonl", convs * 16)  # enough text for 16 windows
    windows = CalibrationDataModule(str(tmp_path / "c.jsonl"), nsamples=16, seqlen=n - 2,
                                    chat_template=True).calibration(tok)
    starts = windows[:, :2].tolist()
    assert [bos, bos] not in starts and any(s[0] == bos for s in starts)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("source,why", [
    ("embedded", "is a named source"), ("c4", "is a named source"), ("wikitext2", "is a named source"),
    ("hf:org/chats", "is a named source"), ("notes.txt", r"is a \.txt file"),
    ("rows.json", r"is a \.json file"), ("rows.parquet", r"is a \.parquet file"),
])
def test_chat_template_needs_a_jsonl_source(source, why):
    pattern = rf"chat_template=True .*JSONL.*source={re.escape(repr(source))} {why}"
    with pytest.raises(ValueError, match=pattern):
        CalibrationDataModule(source, chat_template=True)
    with pytest.raises(ValueError, match=pattern):
        check_chat_source(source)
    CalibrationDataModule(source)  # plain text: fine


def test_chat_template_must_be_a_bool():
    with pytest.raises(ValueError, match=r"chat_template='yes' must be true or false"):
        CalibrationDataModule("c.jsonl", chat_template="yes")  # type: ignore[arg-type]


def test_folder_with_other_text_files_is_refused(tmp_path, chat_tok):
    write_chats(tmp_path / "a.jsonl", conversations())
    (tmp_path / "notes.txt").write_text("plain text")
    data = CalibrationDataModule(str(tmp_path), nsamples=2, seqlen=8, chat_template=True)
    with pytest.raises(ValueError, match=r"reads only \.jsonl / \.jsonl\.gz files.*notes\.txt"):
        data.calibration(chat_tok)


@pytest.mark.parametrize("record,message", [
    ({"text": "hello"}, r"no 'messages' field \(keys: \['text'\]\)"),
    ({"messages": "hello"}, r"'messages' must be a list of \{role, content\} objects, got a JSON str"),
    ({"messages": []}, r"'messages' is an empty list"),
    ({"messages": ["hello"]}, r"message 0 must be a \{role, content\} object, got a JSON str"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]},
     r"message 1 has no 'content'"),
    ([{"content": "a"}], r"message 0 has no 'role'"),
    ({"messages": [{"role": "user", "content": 3}]}, r"message 0: 'content' must be a string, got int"),
    (5, r"expected a conversation, got a JSON int"),
])
def test_bad_record_names_file_and_line(tmp_path, chat_tok, record, message):
    path = tmp_path / "chats.jsonl"
    good = json.dumps({"messages": conversations(1)[0]})
    path.write_text(f"{good}\n\n{json.dumps(record)}\n{good}\n")
    pattern = rf"{re.escape(str(path))}:3: {message}"
    with pytest.raises(ValueError, match=pattern):
        load_conversations(str(path))
    data = CalibrationDataModule(str(path), nsamples=2, seqlen=8, chat_template=True)
    with pytest.raises(ValueError, match=pattern):
        data.calibration(chat_tok)


def test_invalid_json_line(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps([{"role": "user", "content": "a"}]) + "\n{not json\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: invalid JSON"):
        load_conversations(str(path))


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_empty_file(tmp_path, chat_tok, text):
    path = tmp_path / "chats.jsonl"
    path.write_text(text)
    data = CalibrationDataModule(str(path), nsamples=2, seqlen=8, chat_template=True)
    pattern = rf"{re.escape(str(path))}: contains no conversations \(empty file\)"
    with pytest.raises(ValueError, match=pattern):
        data.calibration(chat_tok)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"source='.*nothere\.jsonl': no such file"):
        load_conversations(str(tmp_path / "nothere.jsonl"))


def test_tokenizer_without_chat_template(tmp_path):
    tok = tiny_tokenizer()
    assert tok.chat_template is None
    write_chats(tmp_path / "chats.jsonl", conversations())
    data = CalibrationDataModule(str(tmp_path / "chats.jsonl"), nsamples=2, seqlen=8, chat_template=True)
    pattern = r"tokenizer .* has no chat template \(tokenizer\.chat_template is None\).*chat_template=False"
    with pytest.raises(ValueError, match=pattern):
        data.calibration(tok)
    with pytest.raises(ValueError, match=pattern):
        render_chats(tok, conversations())


def test_template_that_fails_names_the_conversation(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('system messages are not supported') }}{% endif %}"
                         "{{ m['content'] }}{% endfor %}")
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps([{"role": "user", "content": "a"}]) + "\n"
                    + json.dumps([{"role": "system", "content": "b"}]) + "\n")
    data = CalibrationDataModule(str(path), nsamples=1, seqlen=2, chat_template=True)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: the tokenizer's chat template could "
                                         r"not render .*system messages are not supported"):
        data.calibration(tok)


def test_plain_text_loading_rejects_chat_records(tmp_path, chat_tok):
    """Without chat_template the same file is read as plain text (and has no 'text' field)."""
    write_chats(tmp_path / "chats.jsonl", conversations(), bare_every=10**6)
    with pytest.raises(ValueError, match=r"no text field 'text'; available keys: \['id', 'messages'\]"):
        CalibrationDataModule(str(tmp_path / "chats.jsonl"), nsamples=2, seqlen=8).calibration(chat_tok)


# ---------------------------------------------------------------- pre-flight, protocol, fingerprint
def test_preflight_byte_bound_holds_for_chat_jsonl(tmp_path, chat_tok):
    path = tmp_path / "chats.jsonl"
    write_chats(path, conversations())
    most = check_local_text("data.source", str(path))
    tokens = sum(tokenize_text(chat_tok, d, add_special_tokens=False).numel()
                 for d in render_chats(chat_tok, conversations()))
    assert most is not None and most >= tokens
    check_enough_text(str(path), most, 8, 48)  # what the windows test draws
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="is an empty file"):
        check_local_text("data.source", str(tmp_path / "empty.jsonl"))


PLAIN_KEYS = {"source", "nsamples", "seqlen", "seed", "batch_size", "text_field"}


def test_protocol_records_chat_template_only_when_on():
    plain = CalibrationDataModule().protocol()
    assert set(plain) == PLAIN_KEYS and "chat_template" not in plain
    assert CalibrationDataModule(chat_template=False).protocol() == plain
    chat = CalibrationDataModule("c.jsonl", chat_template=True).protocol()
    assert chat["chat_template"] is True and set(chat) == PLAIN_KEYS | {"chat_template"}


def test_old_run_directory_resumes_with_the_default(tmp_path):
    settings, opts = RotationSettings(), RunOptions()
    new = fingerprint(settings, CalibrationDataModule(), opts)
    # what a run directory made before chat_template existed holds
    old = {**new, "data": {"source": "embedded", "nsamples": 64, "seqlen": 512, "seed": 0,
                           "batch_size": 8, "text_field": "text"}}
    assert new == old and describe_differences(old, new) == []
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "fingerprint.json").write_text(json.dumps(old))
    (state_dir / "layer_00.safetensors").write_bytes(b"finished")
    assert RunState(tmp_path, new).check() is False  # resumes: same settings
    chat = fingerprint(settings, CalibrationDataModule("embedded.jsonl", chat_template=True), opts)
    with pytest.raises(ValueError, match=r"(?s)finished layers.*data\.chat_template: False → True"):
        RunState(tmp_path, chat).check()


def test_command_line_run_records_chat_template(tmp_path, capsys):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    tok = AutoTokenizer.from_pretrained(src)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(src)
    write_chats(tmp_path / "chats.jsonl", conversations())
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:  # the default source is plain text
        main(fit_args(src, run, extra=("--data.chat_template", "true")))
    assert exit_info.value.code == 2 and not (run / "state").exists()
    err = capsys.readouterr().err
    assert "source='embedded' is a named source" in err and "Traceback" not in err
    main(fit_args(src, run, steps=1, nsamples=4, seqlen=32,
                  extra=("--data.source", str(tmp_path / "chats.jsonl"), "--data.chat_template", "true",
                         "--run.eval.dense", "false")))
    results = json.loads((run / "results.json").read_text())
    assert results["calibration"]["chat_template"] is True
    assert results["calibration"]["tokens"] == 4 * 32
    assert json.loads((run / "state" / "fingerprint.json").read_text())["data"]["chat_template"] is True
