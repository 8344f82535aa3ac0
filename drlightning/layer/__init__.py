"""One decoder layer's step, as plain functions: permute channels, prune, guard."""
