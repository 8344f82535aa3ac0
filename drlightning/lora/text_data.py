"""A LightningDataModule of fixed-length token windows over a text (training and validation)."""

from __future__ import annotations

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from ..data import load_documents, tokenize_text


class TextDataModule(LightningDataModule):
    """Token windows from a source's calibration part: the last ``val_windows`` are held out.

    The held-out windows pick the checkpoint; the source's evaluation part (used for the reported
    perplexity) is never trained on or selected on.

    Args:
        source: "embedded" (offline default), "c4", "wikitext2", "hf:<id>" or a local text path.
        seqlen: tokens per window.
        batch_size: windows per step.
        max_train_windows: use at most this many training windows (None: all).
        val_windows: held-out validation windows.
        text_field: field holding the text in json/jsonl/parquet/hub sources.
        seed: shuffling seed of the training windows.
    """

    def __init__(self, source: str = "embedded", seqlen: int = 256, batch_size: int = 4,
                 max_train_windows: int | None = None, val_windows: int = 16,
                 text_field: str = "text", seed: int = 0) -> None:
        super().__init__()
        for name, value, low in (("seqlen", seqlen, 2), ("batch_size", batch_size, 1),
                                 ("val_windows", val_windows, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer ≥ {low}")
        if max_train_windows is not None and max_train_windows < 1:
            raise ValueError(f"max_train_windows={max_train_windows!r} must be ≥ 1 or null (all)")
        self.save_hyperparameters()
        self.train: torch.Tensor | None = None
        self.val: torch.Tensor | None = None

    def split(self, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) non-overlapping (n, seqlen) windows of the calibration part."""
        hp = self.hparams
        text = "\n\n".join(load_documents(hp.source, "calibration", text_field=hp.text_field))
        ids = tokenize_text(tokenizer, text)[0]
        n = ids.numel() // hp.seqlen
        if n < hp.val_windows + 1:
            raise ValueError(f"{hp.source!r} has {ids.numel()} tokens: {n} windows of seqlen="
                             f"{hp.seqlen}, but val_windows={hp.val_windows} plus at least one "
                             f"training window are needed")
        windows = ids[: n * hp.seqlen].reshape(n, hp.seqlen)
        train, val = windows[: n - hp.val_windows], windows[n - hp.val_windows:]
        if hp.max_train_windows is not None:
            train = train[: hp.max_train_windows]
        return train, val

    def setup(self, stage: str | None = None) -> None:
        """Tokenise with the tokenizer of the Trainer's LightningModule (LoRAModule has one)."""
        if self.train is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            tokenizer = getattr(module, "tokenizer", None)
            if tokenizer is None:
                raise RuntimeError("TextDataModule tokenises with the `tokenizer` of the Trainer's "
                                   f"LightningModule; {type(module).__name__} has none")
            self.train, self.val = self.split(tokenizer)

    def protocol(self) -> dict:
        """What the adapters were trained on (for results.json)."""
        return {**{k: v for k, v in self.hparams.items() if not k.startswith("_")},
                "train_windows": None if self.train is None else len(self.train)}

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train, batch_size=self.hparams.batch_size, shuffle=True, generator=gen)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.hparams.batch_size)
