"""The run-level LightningDataModule: calibration windows from a text source."""

from __future__ import annotations

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from ..data import calibration_windows, load_documents


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
    """

    def __init__(
        self,
        source: str = "embedded",
        nsamples: int = 64,
        seqlen: int = 512,
        seed: int = 0,
        batch_size: int = 8,
        text_field: str = "text",
    ) -> None:
        super().__init__()
        for name, value, low in (("nsamples", nsamples, 1), ("seqlen", seqlen, 2),
                                 ("batch_size", batch_size, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer ≥ {low}")
        self.save_hyperparameters()
        self.windows: torch.Tensor | None = None

    def calibration(self, tokenizer, max_length: int | None = None) -> torch.Tensor:
        """Sample (once) and return the (nsamples, seqlen) calibration token windows."""
        hp = self.hparams
        if max_length is not None and hp.seqlen > max_length:
            raise ValueError(f"seqlen={hp.seqlen} exceeds the model context of {max_length} tokens")
        if self.windows is None:
            docs = load_documents(hp.source, "calibration", text_field=hp.text_field)
            self.windows = calibration_windows(tokenizer, docs, hp.nsamples, hp.seqlen, hp.seed)
        return self.windows

    def protocol(self) -> dict:
        """The calibration settings, for results.json."""
        return {k: v for k, v in self.hparams.items() if not k.startswith("_")}

    def train_dataloader(self) -> DataLoader:
        assert self.windows is not None, "call calibration(tokenizer) first"
        return DataLoader(self.windows, batch_size=self.hparams.batch_size)
