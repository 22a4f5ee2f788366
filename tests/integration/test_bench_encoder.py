"""The encoder benchmark's pipeline (benchmarks/bench_encoder.py), on a few frames, so that it cannot rot
unseen between GPU runs (benchmarks/gpu/run.sh runs it after the plumbing benchmark): the real core,
a real worker with ViT-B-32 (random weights, this machine's CPU), pisim and a lossless ingest; every
frame it asked for is embedded (the function checks the stream's end) and a rate comes back. How
fast is the benchmark's to say, not this test's."""

from __future__ import annotations

import math

import pytest

from benchmarks.bench_encoder import pipeline_throughput


@pytest.mark.timeout(300)
def test_the_pipeline_embeds_every_frame_it_was_asked_for_and_gives_a_rate():
    fps = pipeline_throughput(workers=1, threads=2, frames=40, batch_size=2)  # 20 batches: the least it takes
    assert fps > 0 and math.isfinite(fps)
