"""The run-level LightningDataModule: calibration windows from a text source."""

from __future__ import annotations

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from ..data import calibration_windows, check_chat_source, load_documents, render_chats
from ..data.chat import check_chat_tokenizer, located_conversations

LATER_DEFAULTS = {"chat_template": False, "held_out": 0}
"""Settings added later, with the value that reproduces the earlier behaviour: ``protocol()`` (and
so a run directory's fingerprint) leaves them out while at that value, so older runs still resume."""


class CalibrationDataModule(LightningDataModule):
    """Calibration text → ``nsamples`` windows of ``seqlen`` tokens (paper protocol sampling).

    Args:
        source: "embedded" (Python's own English docs, offline), "c4" (paper protocol, train shard 0),
            "wikitext2", "hf:<dataset>[:<config>]", or a local .txt/.jsonl/.json/.parquet file or folder.
        nsamples: number of calibration windows (paper: 128).
        seqlen: tokens per window (paper: 2048).
        seed: ``random.seed`` for window sampling (paper: 0).
        batch_size: windows per forward pass when replaying layers.
        text_field: field holding the text in json/jsonl/parquet/hub sources.
        chat_template: calibrate an instruct model on conversations: ``source`` is a local .jsonl
            (.jsonl.gz) file or folder with one ``{"messages": [{"role": ..., "content": ...}, ...]}``
            (or bare message list) per line; each is rendered with the tokenizer's chat template
            (``apply_chat_template(messages, tokenize=False)``) into one document. ``text_field``
            is not used. False (default): plain text.
        held_out: extra windows drawn after the ``nsamples`` ones from the same source, sharing
            no text with them: no fit sees them (rotations, role weights, the pruner's
            statistics); every selection judges on them — the per-layer guard, the shared
            rotation's model-wide guard and ``run.judge``. 0 (default): none. Unlike
            ``model.holdout`` (a share of the ``nsamples`` windows), the fits keep all
            ``nsamples`` windows.
    """

    def __init__(
        self,
        source: str = "embedded",
        nsamples: int = 64,
        seqlen: int = 512,
        seed: int = 0,
        batch_size: int = 8,
        text_field: str = "text",
        chat_template: bool = False,
        held_out: int = 0,
    ) -> None:
        super().__init__()
        for name, value, low in (("nsamples", nsamples, 1), ("seqlen", seqlen, 2),
                                 ("batch_size", batch_size, 1), ("held_out", held_out, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer ≥ {low}")
        if not isinstance(chat_template, bool):
            raise ValueError(f"chat_template={chat_template!r} must be true or false")
        if chat_template:
            check_chat_source(source)
        self.save_hyperparameters()
        self.windows: torch.Tensor | None = None
        self.source_label: str | None = None
        """How reports and the run fingerprint name ``source`` when it is a file the caller made
        (the Python API's texts), instead of that file's temporary path."""

    def documents(self, tokenizer) -> list[str]:
        """The calibration documents: the source's texts, or its conversations rendered with
        ``tokenizer``'s chat template (``chat_template=True``)."""
        hp = self.hparams
        if not hp.get("chat_template", False):
            return load_documents(hp.source, "calibration", text_field=hp.text_field)
        check_chat_tokenizer(tokenizer)  # before reading a possibly large file
        located = located_conversations(hp.source)
        return render_chats(tokenizer, [messages for _, messages in located],
                            [where for where, _ in located])

    def calibration(self, tokenizer, max_length: int | None = None) -> torch.Tensor:
        """Sample (once) and return the (nsamples, seqlen) calibration token windows."""
        hp = self.hparams
        if max_length is not None and hp.seqlen > max_length:
            raise ValueError(f"seqlen={hp.seqlen} exceeds the model context of {max_length} tokens")
        if self.windows is None:
            # a rendered chat already holds its special tokens (BOS, turn markers)
            self.windows = calibration_windows(tokenizer, self.documents(tokenizer), hp.nsamples,
                                               hp.seqlen, hp.seed,
                                               add_special_tokens=not hp.get("chat_template", False),
                                               held_out=hp.get("held_out", 0))
        return self.windows

    @property
    def held_out(self) -> int:
        """Extra held-out windows at the end of :meth:`calibration`'s windows (``held_out``)."""
        return int(self.hparams.get("held_out", 0))

    def protocol(self) -> dict:
        """The calibration settings, for results.json and the run fingerprint (settings added
        later are left out while at their earlier behaviour, see ``LATER_DEFAULTS``)."""
        kept = {k: v for k, v in self.hparams.items()
                if not k.startswith("_") and LATER_DEFAULTS.get(k, object()) != v}
        return {**kept, "source": self.source_label} if self.source_label else kept

    def train_dataloader(self) -> DataLoader:
        assert self.windows is not None, "call calibration(tokenizer) first"
        return DataLoader(self.windows, batch_size=self.hparams.batch_size)
