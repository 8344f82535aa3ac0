"""A whole run: checks and fingerprint, run state, the sequential and parallel layer loops,
layer-by-layer loading."""
