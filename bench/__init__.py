"""Benchmarks: scripts that print figures measured against baselines in the same run."""
