"""User errors at the command line end in one ``error:`` line and exit status 2, never a traceback,
and leave the run directory as it was: malformed --config YAML, malformed or incomplete JSON the
CLI reads, bad option values, and trainer settings the layer loop cannot honour."""

from __future__ import annotations

import shutil

import pytest

from drlightning.cli_errors import check_accelerator, check_one_process

from .clean_failure import fails_cleanly, snapshot

BAD_YAML = {
    "unclosed": ("model: [unclosed\n", "not valid YAML at line 2, column 1"),
    "tab": ("model:\n\tsteps: 3\n", "line 2, column 1: found character '\\t'"),
    "scalar": ("just a scalar\n", "the top level holds a string ('just a scalar'), not a mapping"),
    "empty": ("# nothing here\n", "the top level holds nothing, not a mapping"),
    "json": ('{"model": {"steps": 3]\n', "not valid YAML at line 1"),
}
COMMANDS = {"fit": ["fit", "--run.output_dir"], "lora": ["lora", "fit", "--export.output_dir"],
            "eval": ["eval", "--output"], "fit stage lora": ["fit", "--export.output_dir"]}
"""Each command, with the option naming where it would write."""


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(BAD_YAML))
def test_a_malformed_config_file_is_one_line_naming_file_and_line(tmp_path, capsys, command, case):
    text, expected = BAD_YAML[case]
    if command == "fit stage lora" and case in ("unclosed", "tab"):
        text = "stage: lora\n" + text  # routed to the LoRA stage, had it parsed
        expected = expected.replace("line 2", "line 3")
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    before = snapshot(tmp_path)
    fails_cleanly(capsys, [*COMMANDS[command], str(tmp_path / "out"), "--config", str(config)],
                  f"--config {config}: ", expected)
    assert snapshot(tmp_path) == before


def test_bad_option_values_are_one_line(capsys):
    fails_cleanly(capsys, ["fit", "--model.steps", "x"], "model.steps=x; allowed: int")
    fails_cleanly(capsys, ["eval", "--eval.max_windows", "x"], "eval.max_windows=x; allowed: int or null")
    fails_cleanly(capsys, ["eval", "--eval.data", "3"], "eval.data=3; allowed: list")
    fails_cleanly(capsys, ["eval", "--eval", "{bad"], "eval={bad; allowed: EvalPlan or null")
    fails_cleanly(capsys, ["eval", "--eval.max_window", "1"], "unknown option 'eval.max_window'",
                  "did you mean 'eval.max_windows'?")


@pytest.fixture
def run(finished_run, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(finished_run(), path)
    return path


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine, seen without CUDA (the same answer on a GPU machine)."""
    from lightning.pytorch.accelerators import CUDAAccelerator

    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: False))


@pytest.mark.parametrize("flags, expected", [
    (["--trainer.accelerator", "cuda"], ["trainer.accelerator='cuda': no cuda device", "allowed here: auto"]),
    (["--trainer.devices", "2"], ["trainer.devices='2'", "run.launch.mode=parallel under torchrun"]),
    (["--trainer.devices", "-1"], ["trainer.devices='-1'", "allowed: 1"]),
    (["--trainer.num_nodes", "2"], ["trainer.num_nodes=2: allowed: 1", "one process"]),
])
def test_trainer_settings_the_layer_loop_cannot_honour_are_refused(run, capsys, no_cuda, flags, expected):
    before = snapshot(run)
    fails_cleanly(capsys, ["fit", "--run.output_dir", str(run), *flags], *expected)
    assert snapshot(run) == before


def test_devices_auto_is_refused_where_it_means_several_gpus(run, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    before = snapshot(run)
    fails_cleanly(capsys, ["fit", "--run.output_dir", str(run), "--trainer.devices", "auto"],
                  "trainer.devices='auto' (here: 2 GPUs)", "torchrun")
    assert snapshot(run) == before


def test_one_device_settings_pass(monkeypatch, no_cuda):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for devices in (1, "1", "auto", [0], "0,"):
        check_one_process({"devices": devices, "num_nodes": 1, "accelerator": "auto"})
    for accelerator in ("auto", "cpu"):
        check_accelerator({"accelerator": accelerator})
    with pytest.raises(ValueError, match="trainer.devices=\\[0, 1\\]"):
        check_one_process({"devices": [0, 1], "num_nodes": 1})
    with pytest.raises(ValueError, match="accelerator='gpu': no gpu device"):
        check_accelerator({"accelerator": "gpu"})


@pytest.mark.parametrize("route", ["lora fit", "fit with a stage: lora config"])
def test_lora_stage_refuses_a_missing_accelerator(run, tmp_path, capsys, no_cuda, route):
    config = tmp_path / "lora.yaml"
    config.write_text("stage: lora\n")
    args = ["lora", "fit"] if route == "lora fit" else ["fit", "--config", str(config)]
    fails_cleanly(capsys, [*args, "--model.model", str(run), "--export.output_dir", str(tmp_path / "lora"),
                           "--trainer.accelerator", "cuda"], "trainer.accelerator='cuda': no cuda device")
    assert not (tmp_path / "lora").exists()


BROKEN_RESULTS = {
    "empty": ("{}", "missing or malformed method, pattern, steps"),
    "not json": ('{"method": "wanda",\n', "not valid JSON (line 2, column 1"),
    "array": ("[1]", "holds an array, not a JSON object"),
    "ppl": ('{"method": "m", "pattern": "2:4", "steps": 1, "ppl": "high"}', "ppl (dataset → number)"),
    "tasks": ('{"method": "m", "pattern": "2:4", "steps": 1, "zero_shot": {"tasks": {"piqa": {}}}}',
              "zero_shot (tasks with metric and value, and mean)"),
    "lora": ('{"lora": {}}', "missing lora.r"),
}


@pytest.mark.parametrize("case", list(BROKEN_RESULTS))
def test_compare_names_the_file_and_what_it_lacks(run, tmp_path, capsys, case):
    text, expected = BROKEN_RESULTS[case]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(text)
    before = snapshot(tmp_path)
    fails_cleanly(capsys, ["compare", str(run), str(bad)], f"{bad / 'results.json'}: ", expected)
    assert snapshot(tmp_path) == before


def test_compare_of_a_directory_without_results(run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    fails_cleanly(capsys, ["compare", str(run), str(tmp_path / "empty")],
                  f"{tmp_path / 'empty'} is not a drlightning run directory (no results.json)")
