"""The recorder's snapshots, asked for by seq (WantPictures), with real processes: pisim over HTTP, an
ingest, a worker, the core and the recorder on real ZeroMQ sockets, a real PostgreSQL with pgvector.

No viewer runs: the recorder subscribes to nothing on the frames publisher, so no stream is watched
and the ingest sends no preview; every periodic snapshot and every scene change's snapshot is the
ingest's answer to the recorder's WantPictures, written before its row names it.
"""

from __future__ import annotations

import psycopg
import pytest
import zmq

from encoders.services.recorder.snapshots import SnapshotPolicy
from encoders.shared import zmqio
from encoders.shared.messages import EndOfStream, MetricsRecord, Stats

from ..conftest import wait_for
from .pipeline import Pipeline, collect, subscribe

FRAMES = 400  # 10 s at 40 fps; pisim cuts to another scene every second
INTERVAL = 0.5  # Pipeline.start_recorder's --snapshot-interval
# The records of the last frames may come after their ingest has left (it leaves once its last
# frames are assigned; a worker holds up to 16 of them): their pictures can no longer come.
END_MARGIN = 48


@pytest.fixture
def pipeline(service, tiny_model, tmp_path, database) -> Pipeline:
    return Pipeline(service, tiny_model, tmp_path, database)


def due(records: list[MetricsRecord]) -> list[int]:
    """The seqs the snapshot policy picks when every picture comes."""
    policy, out = SnapshotPolicy(INTERVAL), []
    for r in records:
        if policy.due(r.t_capture):
            policy.taken(r.t_capture)
            out.append(r.seq)
    return out


def ingest_stats(sub: zmq.Socket) -> list[dict]:
    """The ingest's Stats the core republished on its frames publisher, as many as are waiting."""
    out = []
    for msg in zmqio.receive_waiting(sub, limit=10_000, topic=True):
        if isinstance(msg, Stats) and msg.service == "ingest":
            out.append(msg.counters)
    return out


@pytest.mark.timeout(240)
def test_snapshots_are_the_ingests_answers_to_want_pictures_and_nothing_is_previewed(pipeline, sockets):
    records_sub = subscribe(sockets, pipeline.metrics_pub)
    # Stats only: a subscription to "stats/" watches no stream (only a prefix of "frame/cam0" does).
    stats_sub = sockets.connect(zmq.SUB, f"tcp://127.0.0.1:{pipeline.frames_port}", subscribe=[b"stats/cam0"])
    pipeline.start_core()
    pipeline.start_recorder()
    pipeline.start_worker("w0")
    url = pipeline.start_camera(0, fps=40)
    ingest = pipeline.start_ingest(0, url, "--max-frames", str(FRAMES), "--lossless")
    got = collect(records_sub, until_eos=1)
    records = [m for m in got if isinstance(m, MetricsRecord)]
    (eos,) = [m for m in got if isinstance(m, EndOfStream)]
    stats: list[dict] = []

    def answered() -> bool:
        stats.extend(ingest_stats(stats_sub))
        return any(s.get("pictures_wanted") for s in stats)

    # The ingest's last Stats (sent as it ends) says what it sent all along.
    wait_for(answered, 30, "the ingest's Stats saying it answered the recorder's WantPictures")
    done = pipeline.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    stats += ingest_stats(stats_sub)

    # No viewer, so no preview: the recorder's wants were the only pictures the ingest sent the core.
    assert eos.counts["embedded"] == FRAMES and len(records) == FRAMES
    assert stats and all(s.get("previews", 0) == 0 for s in stats), stats
    assert "previews at most" not in ingest.output()  # never told Preview(fps > 0)

    run = pipeline.run_dir
    assert run is not None
    with psycopg.connect(pipeline.database) as conn:
        rows = conn.execute(
            "SELECT f.seq, f.snapshot_path FROM frames f JOIN runs r ON r.id = f.run_id WHERE r.name = %s "
            "ORDER BY f.seq",
            (run.name,),
        ).fetchall()
        scenes: dict[int, str | None] = dict(
            conn.execute(
                "SELECT s.seq, s.snapshot_path FROM scene_changes s JOIN runs r ON r.id = s.run_id WHERE r.name = %s",
                (run.name,),
            ).fetchall()
        )
    assert [seq for seq, _ in rows] == [r.seq for r in records]
    cutoff = eos.last_seq - END_MARGIN

    # Periodic: exactly the frames the policy picks (no frame passed over for want of its picture).
    shots = [seq for seq, path in rows if path]
    assert [s for s in shots if s < cutoff] == [s for s in due(records) if s < cutoff]
    # Scene changes: each one's own picture (pisim cuts every second: several in 10 s).
    changes = [r.seq for r in records if r.scene_change]
    assert set(scenes) == set(changes)
    early = [seq for seq in changes if seq < cutoff]
    assert early, f"no scene change before the stream's last frames: {changes}"
    assert all(scenes[seq] for seq in early), scenes

    # Every path a row names is a file, a JPEG as the camera sent it; every snapshot file is named by a row.
    named = {path for _, path in rows if path} | {path for path in scenes.values() if path}
    for path in named:
        assert (run / path).read_bytes()[:2] == b"\xff\xd8", path
    on_disk = {p.relative_to(run).as_posix() for p in (run / "snapshots").iterdir()}
    assert on_disk == named
