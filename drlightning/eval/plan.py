"""The evaluation plan: one value for what an evaluation measures, wherever it runs — a fit's
``run.eval``, ``drlightning eval --eval.*``, the LoRA stage's ``export.eval`` and the Python API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

DEFAULT_SEQLEN = 512
"""Perplexity window when neither the plan nor a run it belongs to says one."""


@dataclass(frozen=True)
class EvalPlan:
    """What one evaluation measures.

    Args:
        data: perplexity datasets: "embedded", "speeches" (128 windows), "wikitext2", "c4" (256
            windows), "hf:<id>" or local paths.
        seqlen: perplexity window length (None: the calibration seqlen in a fit, the source run's
            in the LoRA stage, else 512).
        max_windows: evaluate only the first N windows (None = all; C4 and speeches: their
            protocol's 256 and 128).
        batch_size: windows per forward pass, and lm-eval's batch size for the zero-shot tasks.
        zero_shot: lm-eval tasks evaluated 0-shot, e.g. [piqa, hellaswag, arc_easy,
            arc_challenge, winogrande] or [drl_continuation] (offline, generated from
            ``task_text``); empty = perplexity only.
        task_data_dir: folder of <task>.jsonl files to run the standard tasks offline.
        task_text: text source of the generated ``drl_continuation`` task.
        task_items: number of generated ``drl_continuation`` items.
        task_limit: evaluate only the first N documents of each task.
    """

    data: list[str] = field(default_factory=lambda: ["embedded"])
    seqlen: int | None = None
    max_windows: int | None = None
    batch_size: int = 4
    zero_shot: list[str] = field(default_factory=list)
    task_data_dir: str | None = None
    task_text: str = "embedded"
    task_items: int = 200
    task_limit: int | None = None

    def resolved(self, seqlen: int | None = None) -> EvalPlan:
        """This plan with its window length set: its own, else ``seqlen``, else 512."""
        return replace(self, seqlen=self.seqlen or seqlen or DEFAULT_SEQLEN)

    def protocol(self) -> dict:
        """The plan's fields (results.json's ``eval``), as an :class:`EvalPlan` has them."""
        return {k: v for k, v in asdict(self).items() if k in PLAN_FIELDS}


PLAN_FIELDS = tuple(EvalPlan.__dataclass_fields__)
"""The fields of an evaluation plan (a subclass such as the fit's ``run.eval`` may add more)."""

SHOWN_KEPT = ("seqlen", "max_windows", "data", "zero_shot")
"""The fields a change note lists as kept (zero_shot only when the run measured tasks)."""


def shown(name: str, value) -> str:
    """A plan field's value as a note shows it (``max_windows`` None: "all")."""
    if name == "max_windows" and value is None:
        return "all"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def change_note(run: EvalPlan, plan: EvalPlan) -> str | None:
    """One line saying what ``plan`` changes in a run's own plan ``run`` (None: nothing), e.g.
    "note: evaluating with max_windows 8 instead of the run's 32; the run's other settings kept
    (seqlen 128, data [embedded])"."""
    changed = [k for k in PLAN_FIELDS if getattr(run, k) != getattr(plan, k)]
    if not changed:
        return None
    what = ", ".join(f"{k} {shown(k, getattr(plan, k))} instead of the run's {shown(k, getattr(run, k))}"
                     for k in changed)
    kept = ", ".join(f"{k} {shown(k, getattr(run, k))}" for k in SHOWN_KEPT
                     if k not in changed and (k != "zero_shot" or run.zero_shot))
    return f"note: evaluating with {what}" + (f"; the run's other settings kept ({kept})" if kept else "")
