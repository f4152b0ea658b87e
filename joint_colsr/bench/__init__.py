"""Benchmarks: ``python -m joint_colsr.bench`` (``make bench``) writes benchmarks/results.json and RESULTS.md."""
