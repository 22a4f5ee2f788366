"""Benchmarks: `make bench` (python -m benchmarks) runs them all; figures go to benchmarks/out/."""
