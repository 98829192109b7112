"""Benchmarks of the platform's own cost against Ray's floor and plain PyTorch; run with ``make bench``."""
