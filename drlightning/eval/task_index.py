"""Which lm-eval tasks exist and which Hub dataset each reads — from the task YAML files, in
about a second, instead of lm-eval's TaskManager (half a minute on 2 cores).

Tasks defined some other way (groups, tags, generated names) are not in this quick index;
:func:`known_to_lm_eval` asks lm-eval itself about those.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

_TASK = re.compile(r"^(task|group):\s*['\"]?([\w.\-]+)['\"]?\s*$", re.M)
_FIELD = re.compile(r"^(dataset_path|include):\s*['\"]?([^'\"\s#]+)", re.M)


def _tasks_root() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


@lru_cache(maxsize=1)
def task_files() -> dict[str, Path]:
    """lm-eval task or group name → the YAML file that defines it (first one found)."""
    found: dict[str, Path] = {}
    for path in sorted(_tasks_root().rglob("*.yaml")):
        for match in _TASK.finditer(path.read_text(encoding="utf-8", errors="ignore")):
            found.setdefault(match.group(2), path)
    return found


def _dataset_path(path: Path, depth: int = 0) -> str | None:
    fields = dict(m.groups() for m in _FIELD.finditer(path.read_text(encoding="utf-8",
                                                                     errors="ignore")))
    if "dataset_path" in fields:
        return fields["dataset_path"]
    if "include" in fields and depth < 5:
        parent = path.parent / fields["include"]
        return _dataset_path(parent, depth + 1) if parent.is_file() else None
    return None


def task_dataset(task: str) -> str | None:
    """The Hub dataset ``task`` reads (``dataset_path`` of its YAML, following ``include``),
    or ``None`` when the quick index cannot tell (a group, or a task defined elsewhere)."""
    path = task_files().get(task)
    return _dataset_path(path) if path is not None else None


def known_to_lm_eval(task: str) -> bool:
    """Whether lm-eval knows ``task`` (quick index first, then lm-eval's own task manager)."""
    if task in task_files():
        return True
    from lm_eval.tasks import TaskManager

    return task in TaskManager().all_tasks
