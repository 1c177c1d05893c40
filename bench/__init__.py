"""qiao's benchmarks (``python -m bench.attach``; see bench/README.md)."""
