"""Benchmarks: `make bench` (python -m benchmarks) runs them all; figures go to benchmarks/out/."""

from pathlib import Path

OUT = Path(__file__).parent / "out"
