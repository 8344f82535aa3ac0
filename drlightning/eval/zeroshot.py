"""Zero-shot accuracy through lm-eval (0-shot), from the Hub or fully offline from local files.

Task names: the paper's five (piqa, hellaswag, arc_easy, arc_challenge: acc_norm; winogrande: acc)
or any other lm-eval task, plus ``drl_continuation`` (generated from a text, see continuation.py).
With ``task_data_dir`` the standard tasks read ``<task>.jsonl`` files from that folder
(tasks/local_tasks.yaml) instead of the Hub.
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
from functools import lru_cache
from pathlib import Path

import yaml

from .continuation import continuation_items, write_items

PAPER_TASKS = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande")
CONTINUATION = "drl_continuation"
METRIC = {"piqa": "acc_norm", "hellaswag": "acc_norm", "arc_easy": "acc_norm",
          "arc_challenge": "acc_norm", "winogrande": "acc", CONTINUATION: "acc"}
TASK_DIR = Path(__file__).with_name("tasks")


def local_task_files() -> dict[str, str]:
    """lm-eval task name → expected JSONL file name for offline standard tasks."""
    return yaml.safe_load((TASK_DIR / "local_tasks.yaml").read_text(encoding="utf-8"))


def continuation_spec(text: str, workdir: Path, n_items: int = 200, seed: int = 0) -> dict:
    """The ``drl_continuation`` task config with its generated data file in ``workdir``."""
    data = write_items(continuation_items(text, n_items=n_items, seed=seed),
                       Path(workdir) / "drl_continuation.jsonl")
    cfg = yaml.safe_load((TASK_DIR / f"{CONTINUATION}.yaml").read_text(encoding="utf-8"))
    cfg["dataset_kwargs"]["data_files"]["test"] = str(data)
    return cfg


def local_spec(task: str, data_dir: Path) -> dict:
    """A reference to the registered lm-eval ``task`` that reads a local JSONL file instead."""
    files = local_task_files()
    if task not in files:
        raise ValueError(f"no offline data layout for task {task!r}; offline tasks: "
                         f"{', '.join(files)} and {CONTINUATION!r}")
    path = Path(data_dir) / files[task]
    if not path.is_file():
        raise FileNotFoundError(f"offline task {task!r} needs {path} (JSONL in the task's Hub schema)")
    return {"task": task, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {s: str(path) for s in ("train", "validation", "test")}}}


def task_specs(tasks: list[str], workdir: Path, task_data_dir: str | None = None,
               text: str | None = None, n_items: int = 200) -> list:
    """lm-eval task specs: names (Hub), local overrides (grouped), the generated task."""
    specs: list = []
    local = []
    for task in tasks:
        if task == CONTINUATION:
            if text is None:
                raise ValueError(f"task {CONTINUATION!r} needs a text to generate items from")
            specs.append(continuation_spec(text, workdir, n_items))
        elif task_data_dir is not None:
            local.append(local_spec(task, Path(task_data_dir)))
        else:
            specs.append(task)
    if local:  # references with overrides must sit inside a group in lm-eval ≥ 0.4.10
        specs.append({"group": "drl_offline", "task": local})
    return specs


def summarize(results: dict, tasks: list[str]) -> dict:
    """Per-task accuracy (paper metric), the plain mean, and the numbers of documents."""
    out = {}
    for task in tasks:
        row = results["results"][task]
        metric = METRIC.get(task) or ("acc_norm" if "acc_norm,none" in row else "acc")
        out[task] = {"metric": metric, "value": float(row[f"{metric},none"]),
                     "n": int(results.get("n-samples", {}).get(task, {}).get("effective", 0))}
    mean = sum(r["value"] for r in out.values()) / len(out) if out else float("nan")
    return {"tasks": out, "mean": mean}


@lru_cache(maxsize=2)
def task_manager(standard_tasks: bool):
    """lm-eval's TaskManager, made once per process: indexing lm-eval's own task files takes
    ~10–30 s, and the generated task alone (a full config) needs no index at all."""
    from lm_eval.tasks import TaskManager

    return TaskManager(verbosity="ERROR", include_defaults=standard_tasks)


def zero_shot(model, tokenizer, tasks: list[str], *, task_data_dir: str | None = None,
              text: str | None = None, n_items: int = 200, limit: int | None = None,
              batch_size: int = 8) -> dict:
    """Run 0-shot ``tasks`` on an in-memory model; returns per-task numbers, mean and protocol."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if not tasks:
        return {}
    was_training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)  # sets eval mode
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="drl-tasks-") as work:
            specs = task_specs(tasks, Path(work), task_data_dir, text, n_items)
            res = lm_eval.simple_evaluate(model=lm, tasks=specs, num_fewshot=0, limit=limit,
                                          task_manager=task_manager(set(tasks) != {CONTINUATION}),
                                          verbosity="ERROR", log_samples=False)
    finally:
        quiet.setLevel(level)
        model.train(was_training)
    source = task_data_dir or ("hub" if set(tasks) - {CONTINUATION} else "generated")
    protocol = {"num_fewshot": 0, "limit": limit, "batch_size": batch_size,
                "lm_eval": importlib.metadata.version("lm_eval"),
                "source": source, "metrics": {t: METRIC.get(t, "acc_norm|acc") for t in tasks}}
    if CONTINUATION in tasks:
        protocol["continuation_items"] = n_items
    return {**summarize(res, tasks), "protocol": protocol}
