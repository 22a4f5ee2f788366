"""Alerts from the embeddings themselves (issue #15), through the real pipeline: a camera that
sends one picture over and over is a frozen feed; a black one is a blackout too; each said
once, carried by the record of the frame that set it off, and stored in the events table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import psycopg
import pytest
from PIL import Image

from encoders.shared.messages import MetricsRecord

from .pipeline import Pipeline, collect, subscribe

FRAMES = 40  # 4 s at 10 frames a second: frozen after 2 s


def picture_folder(folder, pixels: np.ndarray):
    folder.mkdir()
    Image.fromarray(pixels).save(folder / "only.jpg", quality=90)
    return str(folder)


@pytest.mark.timeout(240)
def test_a_repeated_picture_is_frozen_and_a_black_one_a_blackout(service, tiny_model, tmp_path, database, sockets):
    env = {"ENCODERS_FROZEN_AFTER": "2", "ENCODERS_BLACKOUT_CONTRAST": "6"}
    pipeline = Pipeline(service, tiny_model, tmp_path, database, env=env)
    pipeline.start_core()
    pipeline.start_recorder()
    records = subscribe(sockets, pipeline.metrics_pub)
    pipeline.start_worker("w0")
    black = picture_folder(tmp_path / "black", np.zeros((240, 320, 3), np.uint8))
    squares = ((np.indices((240, 320)) // 40).sum(axis=0) % 2 * 255).astype(np.uint8)  # a checkerboard
    scene = picture_folder(tmp_path / "scene", np.stack([squares] * 3, axis=-1))
    for i, folder in enumerate((black, scene)):
        camera = pipeline.start_camera(i, fps=10, source=folder)
        pipeline.start_ingest(i, camera, "--max-frames", str(FRAMES), "--lossless")
    got = [m for m in collect(records, until_eos=2) if isinstance(m, MetricsRecord)]
    said = {(r.stream, kind): (r.seq, value or 0.0) for r in got for kind, value in r.events.items()}
    assert sorted(said) == [("cam0", "blackout"), ("cam0", "frozen"), ("cam1", "frozen")]
    assert said[("cam0", "blackout")][0] == 0 and said[("cam0", "blackout")][1] < 6  # its first frame
    first = {s: min(r.t_capture for r in got if r.stream == s) for s in ("cam0", "cam1")}
    for stream in ("cam0", "cam1"):
        seq, still = said[(stream, "frozen")]
        frame = next(r for r in got if r.stream == stream and r.seq == seq)
        assert still >= 2.0 and frame.t_capture - first[stream] == pytest.approx(still, abs=0.01)
    assert all(r.contrast is not None and r.contrast > 30 for r in got if r.stream == "cam1")
    done = pipeline.stop()
    assert done.returncode == 0, done.stderr
    assert pipeline.run_dir is not None
    with psycopg.connect(database) as conn:
        stored = conn.execute(
            "SELECT e.stream, e.kind, e.seq, e.value FROM events e JOIN runs r ON r.id = e.run_id WHERE r.name = %s "
            "ORDER BY 1, 2",
            (pipeline.run_dir.name,),
        ).fetchall()
    assert [(s, k, q) for s, k, q, _ in stored] == [(s, k, said[(s, k)][0]) for s, k in sorted(said)]
    # `encoders events` lists them on the run's timeline, beside its scene changes.
    listed = subprocess.run(
        [sys.executable, "-m", "encoders", "events", "--run", pipeline.run_dir.name, "--format", "json"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "ENCODERS_DATABASE_URL": database},
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    kinds = {(e["stream"], e["kind"]) for e in json.loads(listed.stdout)}
    assert set(said) <= kinds


@pytest.mark.timeout(240)
def test_a_text_trigger_made_by_the_command_fires_once_per_visit(service, tiny_model, tmp_path, database, sockets):
    """`encoders trigger add` embeds the sentence with the model; the core, given the file, fires
    trigger:NAME on the way up. Threshold -1: every frame is near, so one visit, one event."""
    triggers = tmp_path / "triggers.json"
    env = {**os.environ, **tiny_model, "ENCODERS_TRIGGERS": str(triggers)}
    for args in (["add", "door", "a person at the door", "--threshold", "-1"], ["add", "gone", "nothing"]):
        made = subprocess.run([sys.executable, "-m", "encoders", "trigger", *args], capture_output=True, text=True,
                              env=env, timeout=120)  # fmt: skip
        assert made.returncode == 0, made.stderr
    gone = subprocess.run([sys.executable, "-m", "encoders", "trigger", "remove", "gone"], env=env, timeout=60)
    assert gone.returncode == 0
    listed = subprocess.run([sys.executable, "-m", "encoders", "trigger", "list"], capture_output=True, text=True,
                            env=env, timeout=60)  # fmt: skip
    assert (
        listed.stdout.startswith("door\t-1\t")
        and "a person at the door" in listed.stdout
        and "gone" not in listed.stdout
    )

    pipeline = Pipeline(service, tiny_model, tmp_path, database, env={"ENCODERS_TRIGGERS": str(triggers)})
    pipeline.start_core()
    pipeline.start_recorder()
    records = subscribe(sockets, pipeline.metrics_pub)
    pipeline.start_worker("w0")
    pipeline.start_ingest(0, pipeline.start_camera(0, fps=20), "--max-frames", "20", "--lossless")
    got = [m for m in collect(records, until_eos=1) if isinstance(m, MetricsRecord)]
    fired = [(r.seq, kind) for r in got for kind in r.events if kind.startswith("trigger:")]
    assert fired == [(0, "trigger:door")]
    assert -1.0 <= got[0].events["trigger:door"] <= 1.0  # type: ignore[operator]
    assert pipeline.stop().returncode == 0
    assert pipeline.run_dir is not None
    with psycopg.connect(database) as conn:
        stored = conn.execute(
            "SELECT e.kind, e.seq FROM events e JOIN runs r ON r.id = e.run_id WHERE r.name = %s",
            (pipeline.run_dir.name,),
        ).fetchall()
    assert stored == [("trigger:door", 0)]
