"""qiao's benchmarks (``python -m bench.overlay``; see bench/OVERLAY.md)."""
