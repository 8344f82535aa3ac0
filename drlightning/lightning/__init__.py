"""Lightning wrappers: the per-layer RotationModule and LayerDataModule, the calibration datamodule."""
