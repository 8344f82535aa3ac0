"""A run directory never mixes two runs: an exclusive lock, a fingerprint of what the run read
(weights, config, calibration tokens), checked layer files, and dense numbers only under the
full evaluation key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from drlightning.cli import DRLightningCLI, main
from drlightning.pipeline.run_lock import run_lock

from .tiny import checkout_env, fit_args, save_tiny_dir


def _copy_run(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run("llama"), run)
    return run


def _holder(run_dir):
    """A second process holding ``run_dir``'s lock until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from drlightning.pipeline.run_lock import run_lock
        with run_lock({str(run_dir)!r}):
            print("held", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=checkout_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_into_a_locked_directory_is_refused_naming_the_holder(tiny_dir, tmp_path,
                                                                           capsys):
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(fit_args(tiny_dir("llama"), run, steps=2))
        assert exit_.value.code == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and "in use by another drlightning run" in err[0]
        assert f"pid {proc.pid}" in err[0]
        assert not (run / "state").exists()
    finally:
        proc.communicate("")
    with run_lock(run):  # released when the holder ends (the kernel drops a dead holder's lock)
        pass


def test_the_lock_is_reentrant_in_one_process_and_a_failed_start_leaves_nothing(tmp_path):
    run = tmp_path / "run"
    with run_lock(run), run_lock(run):
        assert (run / ".lock").is_file()
    assert list(run.iterdir()) == []  # the lock file goes with the last holder


def test_weights_replaced_in_place_are_refused(tiny_dir, finished_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir("llama"), model)
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(model, run, steps=2))
    other = save_tiny_dir(tmp_path / "other", "llama", seed=1)
    shutil.copy(other / "model.safetensors", model / "model.safetensors")
    with pytest.raises(ValueError, match=r"(?s)other settings or inputs.*content\.weights"):
        DRLightningCLI(args=fit_args(model, run, steps=2))


def test_a_changed_config_is_refused(tiny_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir("llama"), model)
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(model, run, steps=2))
    cfg = json.loads((model / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-3
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"content\.config"):
        DRLightningCLI(args=fit_args(model, run, steps=2))


def test_other_calibration_text_under_the_same_path_is_refused(tiny_dir, tmp_path):
    from drlightning.data import load_documents

    docs = load_documents("embedded", "calibration")
    text = tmp_path / "cal.txt"
    text.write_text(docs[0][:200_000])
    run = tmp_path / "run"
    args = fit_args(tiny_dir("llama"), run, steps=2, extra=("--data.source", str(text)))
    DRLightningCLI(args=args)
    text.write_text(docs[0][150_000:350_000])
    with pytest.raises(ValueError, match=r"content\.calibration"):
        DRLightningCLI(args=args)


@pytest.mark.parametrize("damage,message", [
    ("copied", "holds layer 0, not layer 1"),
    ("flipped", "is damaged"),
    ("truncated", "is truncated"),
    ("foreign", "was written by another run"),
])
def test_a_bad_layer_file_is_named_with_what_to_do(finished_run, tiny_dir, tmp_path, capsys,
                                                   damage, message):
    run = _copy_run(finished_run, tmp_path)
    target = run / "state" / "layer_01.safetensors"
    if damage == "copied":
        shutil.copy(run / "state" / "layer_00.safetensors", target)
    elif damage == "flipped":
        from safetensors import safe_open

        with safe_open(str(target), framework="pt") as fh:
            meta = fh.metadata()
        tensors = load_file(str(target))
        name = sorted(tensors)[0]
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] += 1.0
        save_file(tensors, str(target), metadata=meta)
    elif damage == "truncated":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    else:
        other = tmp_path / "other"
        DRLightningCLI(args=fit_args(tiny_dir("llama"), other, steps=3))
        shutil.copy(other / "state" / "layer_01.safetensors", target)
    before = (run / "results.json").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        main(fit_args(tiny_dir("llama"), run, steps=20))
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0] and "layer_01.safetensors" in err[0]
    assert "delete it to recompute" in err[0]
    assert (run / "results.json").read_bytes() == before


def test_a_rerun_with_other_windows_measures_the_dense_model_again(finished_run, tiny_dir, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    old = json.loads((run / "results.json").read_text())
    args = fit_args(tiny_dir("llama"), run, steps=20)
    args[args.index("--run.eval.max_windows") + 1] = "4"
    DRLightningCLI(args=args)
    new = json.loads((run / "results.json").read_text())
    fresh = tmp_path / "fresh"
    DRLightningCLI(args=[*args[:args.index("--run.output_dir") + 1], str(fresh),
                         *args[args.index("--run.output_dir") + 2:]])
    assert new["dense_ppl"] == json.loads((fresh / "results.json").read_text())["dense_ppl"]
    assert new["dense_ppl"] != old["dense_ppl"]
    assert new["eval"]["max_windows"] == 4


def test_the_cross_run_dense_cache_keys_the_config(tiny_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir("llama"), model)
    DRLightningCLI(args=fit_args(model, tmp_path / "a", steps=0))
    dense_a = json.loads((tmp_path / "a" / "results.json").read_text())["dense_ppl"]
    cfg = json.loads((model / "config.json").read_text())
    cfg["rms_norm_eps"] = 0.5
    (model / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    DRLightningCLI(args=fit_args(model, tmp_path / "b", steps=0))
    assert "reused from" not in capsys.readouterr().out
    dense_b = json.loads((tmp_path / "b" / "results.json").read_text())["dense_ppl"]
    assert dense_a != dense_b


def test_a_failed_rerun_leaves_the_finished_run_as_it_was(finished_run, tiny_dir, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for bad in (["--run.eval.max_windows", "0"], ["--run.eval.batch_size", "0"]):
        args = fit_args(tiny_dir("llama"), run, steps=20)
        i = args.index(bad[0]) if bad[0] in args else None
        if i is not None:
            del args[i:i + 2]
        with pytest.raises(ValueError, match=bad[0].removeprefix("--")):
            DRLightningCLI(args=[*args, *bad, "--run.eval.dense", "false"])
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before


def test_bad_eval_settings_fail_before_any_layer_with_dense_off(tiny_dir, tmp_path):
    run = tmp_path / "run"
    args = fit_args(tiny_dir("llama"), run, steps=2, extra=("--run.eval.dense", "false",
                                                             "--run.eval.seqlen", "100000"))
    with pytest.raises(ValueError, match="run.eval"):
        DRLightningCLI(args=args)
    assert not (run / "state").exists()


def test_the_api_resumes_a_run_of_the_same_texts(tiny_dir, tmp_path, capsys):
    import drlightning
    from drlightning.data import load_documents

    doc = load_documents("embedded", "calibration")[0]
    texts = [doc[i:i + 2000] for i in range(0, 200_000, 2000)]
    kw = dict(method="wanda", nsamples=4, seqlen=64, steps=2, held_out=0, progress=False,
              eval=False, calibration=texts, output_dir=tmp_path / "run")
    first = drlightning.prune(str(tiny_dir("llama")), **kw)
    capsys.readouterr()
    again = drlightning.prune(str(tiny_dir("llama")), **kw)
    assert "were finished by an earlier run" in capsys.readouterr().out
    assert "texts given to prune()" in again.report["calibration"]["source"]
    for (name, a), (_, b) in zip(first.model.state_dict().items(), again.model.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match=r"data\.source: '100 texts.*'99 texts"):
        drlightning.prune(str(tiny_dir("llama")), **{**kw, "calibration": texts[1:]})


def test_the_api_checks_its_calibration_before_loading_the_model(tmp_path):
    import drlightning

    with pytest.raises(ValueError, match="too little calibration text"):
        drlightning.prune(str(tmp_path / "no-such-model"), calibration=["far too short"])


def test_a_result_shaping_trainer_setting_is_part_of_the_fingerprint(tiny_dir, tmp_path):
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(tiny_dir("llama"), run, steps=2))
    with pytest.raises(ValueError, match=r"trainer\.accumulate_grad_batches: '<unset>' → 2"):
        DRLightningCLI(args=fit_args(tiny_dir("llama"), run, steps=2,
                                     extra=("--trainer.accumulate_grad_batches", "2")))


def test_text_that_tokenises_past_the_vocabulary_is_refused_before_any_layer(tmp_path):
    from transformers import AutoTokenizer

    src = save_tiny_dir(tmp_path / "tiny", "llama")
    tok = AutoTokenizer.from_pretrained(src)
    tok.add_tokens(["<beyond>"])  # id 320; the model has 320 rows
    tok.save_pretrained(src)
    text = tmp_path / "cal.txt"
    text.write_text(("Some text <beyond> more text. " * 40 + "\n") * 60)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"calibration text tokenises to id 320 \('<beyond>'\)"):
        DRLightningCLI(args=fit_args(src, run, steps=2, extra=("--data.source", str(text))))
    assert not (run / "state").exists()


def test_eval_refuses_impossible_plan_values_before_loading(tiny_dir, capsys):
    for flag, value in (("--eval.batch_size", "0"), ("--eval.task_items", "0")):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "--model", str(tiny_dir("llama")), flag, value])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"eval.{flag.split('.')[1]}={value}; allowed: an integer ≥ 1" in err


def test_a_damaged_or_misplaced_rotations_file_is_named(tmp_path):
    from drlightning.pipeline.state import load_rotations, save_rotations

    q, r = torch.eye(4), torch.eye(2).expand(2, 2, 2).contiguous()
    path = tmp_path / "layer_03.safetensors"
    save_rotations(path, q, r, {"x": 1}, index=3)
    assert load_rotations(path, 3)[2] == {"x": 1}
    with pytest.raises(ValueError, match="holds layer 3's rotations, not layer 4's"):
        load_rotations(path, 4)
    data = bytearray(path.read_bytes())
    data[-3] ^= 4
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"layer_03\.safetensors is damaged.*delete it to recompute"):
        load_rotations(path, 3)
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(ValueError, match="is truncated"):
        load_rotations(path, 3)


def test_a_sequential_run_under_a_multi_process_launch_is_refused(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="WORLD_SIZE=2 processes of a launch"):
        DRLightningCLI(args=fit_args(tiny_dir("llama"), tmp_path / "run", steps=2))
    assert not (tmp_path / "run" / "state").exists()


def test_the_weights_sample_reaches_the_last_element_of_a_large_tensor():
    from drlightning.pipeline.content import sampled_elements

    big = torch.arange(28_311_552, dtype=torch.float32)  # float32 index rounding once overflowed
    got = sampled_elements(big)
    assert got[0] == 0 and got[-1] == big[-1] and got.numel() == 1024


def test_a_full_disk_while_saving_a_layer_is_one_line_and_the_rerun_resumes(tiny_dir, tmp_path,
                                                                            monkeypatch, capsys):
    import safetensors

    import drlightning.pipeline.state_files as files

    real, calls = files.save_file, []

    def full_after_one(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > 1:  # layer 0 is saved, then the disk is full
            raise safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                                              "StorageFull, message: \"No space left on device\" })")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(files, "save_file", full_after_one)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(fit_args(tiny_dir("llama"), run, steps=2))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no space left on the device" in lines[0]
    assert [p.name for p in (run / "state").glob("layer_*")] == ["layer_00.safetensors"]
    assert not list((run / "state").glob(".*.tmp"))
    monkeypatch.setattr(files, "save_file", real)
    main(fit_args(tiny_dir("llama"), run, steps=2))
    assert "were finished by an earlier run" in capsys.readouterr().out
