"""Results, reports, TensorBoard monitoring and pictures of a run."""
