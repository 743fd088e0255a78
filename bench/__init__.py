"""Load benchmarks: our registry against the reference (distribution 2.8), side by side."""
