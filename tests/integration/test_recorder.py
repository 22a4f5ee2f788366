"""The recorder as a real process, fed by a fake core over real sockets, writing into a real PostgreSQL + pgvector.

The core (fake_core.py) is the recorder's one address: it welcomes it, publishes frames for
its snapshots, sends records and ends of streams on the session, holds each until it is
acknowledged, and tells the recorder to stop. Restarts, repairs and quarantine are in
test_recorder_restarts.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import msgpack
import numpy as np
import psycopg
import pytest
from PIL import Image

from encoders.logging_utils import load_run_embeddings
from encoders.services.recorder.rows import to_spool
from encoders.services.recorder.writer import FrameWriter, Inline, writer_thread
from encoders.shared.messages import Bye, EndOfStream, Frame, FrameCounts, Hello, MetricsRecord, Ready
from encoders.shared.spool import Spool
from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable
from encoders.shared.storage.frames import FrameRow

from ..conftest import free_port, spoil, wait_for
from ..fake_core import FakeCore
from .recorder_helpers import (
    DIM,
    T0,
    Postgres,
    RecorderProcess,
    count_frames,
    csv_seqs,
    frames_rows,
    jpeg_bytes,
    make_record,
    pg_home,
    run_id_of,
    send_stream,
    stored_seqs,
)

# Fixtures: pg, db_url, core and start (tests/integration/conftest.py).


def health(service: str, port: str) -> tuple[int, str]:
    """`encoders health SERVICE`: its exit status and what it said."""
    done = subprocess.run(
        [sys.executable, "-m", "encoders", "health", service, "--prometheus-port", port],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


def end_and_stop(core: FakeCore, rec: RecorderProcess, stream: str, last_seq: int, counts: FrameCounts) -> None:
    """As the core ends a pipeline: the stream's end, acknowledged; then Stop; the recorder exits 0."""
    core.deliver(EndOfStream(stream, last_seq, counts))
    core.wait_acked(stream, last_seq, ended=True)
    core.stop()
    assert rec.wait() == 0, rec.log()


# --------------------------------------------------------------------------------------
# One run, start to end


def test_one_stream_rows_files_index_and_summary(pg, db_url, core, start):
    rec = start(core, db_url)
    core.wait_joined()
    sent = send_stream(core, "cam0", range(10))
    core.send(sent[5])  # a record sent twice (not held again) is recorded once
    core.send([b"not a message"])  # counted and dropped
    for bad in ({"t_capture": "x"}, {"t_capture": math.nan}, {"seq": "7"}, {"stream": "../../etc"}):
        core.send(spoil(dataclasses.replace(sent[0], seq=50), **bad))  # issue #13: the recorder died on these
    final: FrameCounts = {"published": 13, "embedded": 10, "dropped": 2, "skipped": 1, "lost": 0, "late": 0}
    end_and_stop(core, rec, "cam0", 12, final)
    assert len(core.messages(Bye)) == 1 and core.acked["cam0"] == (12, True)
    assert rec.log().count("does not decode") == 1  # the first said, the other four counted
    (ready,) = core.messages(Ready)
    run = rec.run_dir()
    assert ready.run == run.name and ready.stored == {}
    config = json.loads((run / "config.json").read_text())
    run_id = config["run"]["id"]
    assert config["model"] == {"name": "ViT-B-32", "dim": DIM}
    assert config["recorder"]["database_url"].startswith("postgresql://postgres:")

    with pg.connect(db_url) as conn:
        rows = frames_rows(conn, run_id)
        assert [(r[0], r[1]) for r in rows] == [("cam0", i) for i in range(10)]
        for r, m in zip(rows, sent, strict=False):
            np.testing.assert_array_equal(r[5].to_numpy(), m.vector)
            assert r[2].timestamp() == pytest.approx(m.t_capture, abs=1e-6)
            assert r[3] == (None if m.similarity is None else pytest.approx(m.similarity, abs=1e-6))
            assert r[7] == "worker-1"
        assert [r[1] for r in rows if r[6]] == [0, 4, 8]
        assert rows[4][6] == "snapshots/frame_000004.jpg"
        # Asked for by seq (WantPictures), exactly those: the recorder subscribes to no frames.
        assert core.pictures_wanted == [("cam0", 0), ("cam0", 4), ("cam0", 8)]
        assert not core.subscribed.is_set()

        (indexdef,) = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'frames' AND indexdef ILIKE '%USING hnsw%'"
        ).fetchone()
        assert "vector_cosine_ops" in indexdef and "WHERE keyframe" in indexdef
        assert "ef_construction='128'" in indexdef and "m='16'" in indexdef, indexdef
        # Random vectors: no two frames alike, so every frame leads a segment of its own.
        assert conn.execute("SELECT bool_and(keyframe AND keyframe_seq = seq) FROM frames").fetchone() == (True,)
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT seq FROM frames WHERE keyframe ORDER BY embedding <=> %s LIMIT 5", (sent[3].vector,)
            ).fetchall()
        )
        assert "frames_keyframe_hnsw" in plan, plan
        nearest = conn.execute(
            "SELECT seq FROM frames WHERE run_id = %s ORDER BY embedding <=> %s LIMIT 1", (run_id, sent[3].vector)
        ).fetchone()
        assert nearest == (3,)

        name, model, dim, ended_at, summary = conn.execute(
            "SELECT name, model, dim, ended_at, summary FROM runs WHERE id = %s", (run_id,)
        ).fetchone()
        assert (name, model, dim) == (run.name, "ViT-B-32", DIM)
        assert ended_at is not None and summary["streams"]["cam0"]["frames"] == {**final, "not_stored": 0}

    table = (run / "drift.csv").read_text().splitlines()
    assert table[0] == "timestamp,frame,similarity,drift" and len(table) == 11
    for line, m in zip(table[1:], sent, strict=False):
        t, seq, sim, drift = line.split(",")
        assert float(t) == pytest.approx(m.t_capture, abs=1e-6) and int(seq) == m.seq
        if m.similarity is None:
            assert (sim, drift) == ("", "")
        else:
            assert float(sim) == pytest.approx(m.similarity) and float(drift) == pytest.approx(m.drift)

    emb, ts, idx = load_run_embeddings(run)
    assert emb.shape == (10, DIM) and list(idx) == list(range(10))
    np.testing.assert_array_equal(emb, np.stack([m.vector for m in sent]))
    np.testing.assert_array_equal(ts, [m.t_capture for m in sent])
    assert sorted(p.name for p in (run / "embeddings").iterdir()) == [
        "batch_0000.npz",
        "batch_0001.npz",
        "batch_0002.npz",
    ]

    # Snapshot interval 1 s, frames 0.25 s apart: seq 0, 4, 8; their JPEGs byte for byte.
    snaps = sorted((run / "snapshots").iterdir())
    assert [p.name for p in snaps] == ["frame_000000.jpg", "frame_000004.jpg", "frame_000008.jpg"]
    assert snaps[1].read_bytes() == jpeg_bytes("cam0", 4)

    top = json.loads((run / "summary.json").read_text())
    assert list(top["streams"]) == ["cam0"] and top["totals"]["frames"] == {**final, "not_stored": 0}
    run_summary, summary = top["run"], top["streams"]["cam0"]
    assert summary["frames"] == {**final, "not_stored": 0} and summary["counts_from"] == "end_of_stream"
    assert summary["records"] == 10 and summary["db_rows"] == 10 and run_summary["db_rows"] == 10
    assert summary["snapshots"] == 3 and summary["npz_batches"] == 3
    drifts = [m.drift for m in sent[1:] if m.drift is not None]
    similarities = [m.similarity for m in sent[1:] if m.similarity is not None]
    assert len(drifts) == len(similarities) == 9  # every record after the first has both
    assert summary["drift"]["mean"] == pytest.approx(np.mean(drifts))
    assert summary["drift"]["std"] == pytest.approx(np.std(drifts))
    assert summary["similarity"]["min"] == pytest.approx(min(similarities))
    assert summary["duration_s"] == pytest.approx(2.25)
    assert summary["effective_fps"] == pytest.approx(4.0)
    assert run_summary["messages"]["repeated_records"] == 1
    assert run_summary["messages"]["bad_messages"] == 5  # the line that is not a message, and the spoiled four
    assert run_summary["ended_at"] is not None
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "drift.csv",
        "embeddings",
        "snapshots",
        "summary.json",
    ]  # no lock, no spool left behind
    log = rec.log()
    assert "rows in the database" in log and str(run) in log


def test_two_streams_keep_their_own_rows_and_files(pg, db_url, core, start):
    rec = start(core, db_url)
    core.wait_joined()
    for seq in range(6):
        core.frame(Frame("cam0", seq, T0 + seq * 0.25, 4, 4, jpeg_bytes("cam0", seq)))
        core.frame(Frame("cam1", seq, T0 + seq * 0.25, 4, 4, jpeg_bytes("cam1", seq)))
    time.sleep(0.2)  # paces: frames come a little before their records, as from a real pipeline
    for seq in range(6):
        core.deliver(make_record("cam0", seq))
        if seq < 3:
            core.deliver(make_record("cam1", seq))
    core.deliver(EndOfStream("cam0", 5, {"published": 6, "embedded": 6}))
    core.deliver(EndOfStream("cam1", 2, {"published": 3, "embedded": 3}))
    core.wait_acked("cam0", 5, ended=True)
    core.wait_acked("cam1", 2, ended=True)
    core.stop()
    assert rec.wait() == 0, rec.log()
    run = rec.run_dir()
    with pg.connect(db_url) as conn:
        rows = frames_rows(conn, run_id_of(run))
    assert [(r[0], r[1]) for r in rows] == [("cam0", i) for i in range(6)] + [("cam1", i) for i in range(3)]
    cam1_snaps = [r[6] for r in rows if r[0] == "cam1" and r[6]]
    assert cam1_snaps == ["cam1/snapshots/frame_000000.jpg"]
    assert (run / cam1_snaps[0]).read_bytes() == jpeg_bytes("cam1", 0)
    # The first stream in the run folder itself (the seed's layout); the second beside it.
    assert list(load_run_embeddings(run, stream="cam0")[2]) == list(range(6))
    assert list(load_run_embeddings(run / "cam1")[2]) == [0, 1, 2]
    assert csv_seqs(run / "drift.csv") == list(range(6))
    assert csv_seqs(run / "cam1" / "drift.csv") == [0, 1, 2]
    assert json.loads((run / "cam1" / "summary.json").read_text())["streams"]["cam1"]["frames"]["published"] == 3
    top = json.loads((run / "summary.json").read_text())
    assert {name: s["folder"] for name, s in top["streams"].items()} == {"cam0": ".", "cam1": "cam1"}


def test_stream_dirs_give_each_stream_a_folder(pg, db_url, core, start, tmp_path):
    rec = start(core, db_url, "--stream-dirs", "--run-dir", str(tmp_path / "runs" / "20260107_143022"))
    core.wait_joined()
    for cam in ("cam0", "cam1"):
        send_stream(core, cam, range(3), frames=False)
        core.deliver(EndOfStream(cam, 2, {"embedded": 3}))
        core.wait_acked(cam, 2, ended=True)
    core.stop()
    assert rec.wait() == 0, rec.log()
    run = rec.run_dir()
    assert run.name == "20260107_143022"
    assert json.loads((run / "config.json").read_text())["run"]["name"] == "20260107_143022"
    assert sorted(p.name for p in run.iterdir()) == ["cam0", "cam1", "config.json", "summary.json"]
    top = json.loads((run / "summary.json").read_text())
    assert set(top["streams"]) == {"cam0", "cam1"} and top["totals"]["db_rows"] == 6
    assert list(load_run_embeddings(run, stream="cam1")[2]) == [0, 1, 2]


def real_jpeg(colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), colour).save(out, "JPEG", quality=85)
    return out.getvalue()


def small_jpeg(colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, "JPEG", quality=70)
    return out.getvalue()


def test_thumbnails_from_the_records_scene_changes_and_keyframe_segments(pg, db_url, core, start):
    rec = start(core, db_url, "--snapshot-interval", "100")
    core.wait_joined()
    rng = np.random.default_rng(5)
    views = [rng.standard_normal(DIM) for _ in range(2)]
    colours = [(200, 40, 40), (40, 40, 200)]
    for seq in range(12):  # frames 0-5 show one view, 6-11 another: the core flags 6 as a scene change
        core.frame(Frame("cam0", seq, T0 + seq * 0.25, 320, 240, real_jpeg(colours[0 if seq < 6 else 1])))
    for seq in range(12):
        view = 0 if seq < 6 else 1
        v = views[view] + 0.02 * rng.standard_normal(DIM)
        core.deliver(
            MetricsRecord(
                stream="cam0",
                seq=seq,
                t_capture=T0 + seq * 0.25,
                t_encoded=T0,
                worker="w",
                model="ViT-B-32",
                similarity=0.99,
                drift=0.6 if seq == 6 else 0.01,
                rolling={"count": 5, "mean": 0.01, "std": 0.002},
                vector=(v / np.linalg.norm(v)).astype(np.float32),
                scene_change=seq == 6,
                thumbnail=b"" if seq == 9 else small_jpeg(colours[view]),  # the worker made none for 9
            )
        )
    end_and_stop(core, rec, "cam0", 11, {"embedded": 12})
    run = rec.run_dir()
    with pg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT seq, keyframe, keyframe_seq, thumbnail, snapshot_path FROM frames WHERE run_id = %s ORDER BY seq",
            (run_id_of(run),),
        ).fetchall()
        events = conn.execute(
            "SELECT stream, seq, drift, window_mean, window_std, snapshot_path FROM scene_changes WHERE run_id = %s",
            (run_id_of(run),),
        ).fetchall()
    # Two segments of near-identical frames; the scene change starts the second.
    assert [(seq, key, kseq) for seq, key, kseq, _, _ in rows] == [
        (s, s in (0, 6), 0 if s < 6 else 6) for s in range(12)
    ]
    for seq, _, _, thumb, _ in rows:
        assert thumb == (None if seq == 9 else small_jpeg(colours[0 if seq < 6 else 1]))  # as the worker made it
    # Periodic snapshots (every 100 s: the first frame only) keep the seed's names; the scene
    # change, between two of them, gets its own beside them.
    assert [(seq, snap) for seq, _, _, _, snap in rows if snap] == [(0, "snapshots/frame_000000.jpg")]
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["frame_000000.jpg", "scene_000006.jpg"]
    assert (run / "snapshots" / "scene_000006.jpg").read_bytes() == real_jpeg(colours[1])
    assert len(events) == 1
    stream, seq, drift, mean, std, snap = events[0]
    assert (stream, seq, snap) == ("cam0", 6, "snapshots/scene_000006.jpg")
    assert (drift, mean, std) == (pytest.approx(0.6), pytest.approx(0.01), pytest.approx(0.002))
    messages = json.loads((run / "summary.json").read_text())["run"]["messages"]
    assert (messages["thumbnails"], messages["thumbnails_missing"], messages["scene_changes"]) == (11, 1, 1)


def test_keyframe_thumbnails_only_and_no_snapshots(pg, db_url, core, start):
    # No picture in the ingest's ring (the core has none to hand on): the snapshot of frame 0 is asked
    # for, never comes, and is missed once its wait is over; its row goes without it.
    rec = start(core, db_url, "--thumbnails", "keyframes", "--snapshot-wait", "0.5")
    wait_for(core.joined, 20, "the recorder's Ready")
    for seq in range(3):
        r = make_record("cam0", seq)
        r.thumbnail = b"\xff\xd8thumb\xff\xd9"
        core.deliver(r)
    end_and_stop(core, rec, "cam0", 2, {"embedded": 3})
    assert not core.subscribed.is_set()  # the recorder subscribes to nothing on the frames publisher
    assert core.pictures_wanted == [("cam0", 0)]
    with pg.connect(db_url) as conn:
        kept = conn.execute("SELECT seq FROM frames WHERE thumbnail IS NOT NULL ORDER BY seq").fetchall()
    assert kept == [(0,), (1,), (2,)]  # random vectors: every frame is a keyframe
    assert not list((rec.run_dir() / "snapshots").iterdir())
    assert json.loads((rec.run_dir() / "summary.json").read_text())["run"]["messages"]["snapshots_missed"] == 1


# --------------------------------------------------------------------------------------
# Acknowledged delivery


def test_acks_come_only_once_rows_are_committed(pg, db_url, core, start):
    # Rows wait 2 s before they are written: until then nothing is acknowledged.
    rec = start(core, db_url, "--db-flush-s", "2", "--db-batch", "1000")
    wait_for(core.joined, 20, "the recorder's Ready")
    send_stream(core, "cam0", range(8), frames=False)
    run_id = run_id_of(wait_for(lambda: next(iter(rec.run_dirs()), None), 10, "the run folder"))
    seen_before_commit = False
    with pg.connect(db_url) as conn:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with core.lock:
                acked = core.acked.get("cam0", (-1, False))[0]
            stored = stored_seqs(conn, run_id)  # read after the ack: it must hold what the ack says
            assert stored[: acked + 1] == list(range(acked + 1)), (acked, stored)
            seen_before_commit |= acked < 0 and not stored
            if acked == 7:
                break
            time.sleep(0.05)
    assert acked == 7 and seen_before_commit
    end_and_stop(core, rec, "cam0", 7, {"embedded": 8})


def test_database_outage_mid_run_loses_nothing_and_acks_follow_the_spool(core, start):
    home = pg_home()
    pg = Postgres(home, embedded=False)
    try:
        port = str(free_port())
        rec = start(
            core,
            pg.url,
            "--db-retry-max",
            "0.5",
            "--db-final-wait",
            "15",
            "--prometheus-port",
            port,
        )
        wait_for(core.joined, 20, "the recorder's Ready")
        assert health("recorder", port) == (0, "recorder: healthy")
        send_stream(core, "cam0", range(5), frames=False)
        core.wait_acked("cam0", 4)
        pg.stop()
        send_stream(core, "cam0", range(5, 12), frames=False)
        # Acknowledged while the database is away: each row is in the spool, synced, before its ack.
        core.wait_acked("cam0", 11)
        spool = next(rec.runs.glob("*/db_spool.msgpack"))
        with spool.open("rb") as f:
            spooled = [r["seq"] for r in msgpack.Unpacker(f, raw=False)]
        assert set(range(5, 12)) <= set(spooled)
        # Its health check says so (compose shows the recorder unhealthy), and why.
        code, said = health("recorder", port)
        assert code == 1 and "the database is unavailable; " in said and "rows wait in the spool" in said, said
        # The database stays away through failed retries (with backoff): three of them, counted in the log.
        retries = "database still unavailable; next try in"
        wait_for(lambda: rec.log().count(retries) >= 3, 30, "three failed retries of the database", interval=0.2)
        pg.start()
        wait_for(lambda: health("recorder", port)[0] == 0, 30, "the recorder to be healthy again", interval=0.5)
        send_stream(core, "cam0", range(12, 15), frames=False)
        end_and_stop(core, rec, "cam0", 14, {"embedded": 15})
        run_id = run_id_of(rec.run_dir())
        with pg.connect() as conn:
            assert stored_seqs(conn, run_id) == list(range(15))
            assert conn.execute("SELECT ended_at IS NOT NULL FROM runs WHERE id = %s", (run_id,)).fetchone() == (True,)
        assert not spool.exists()
        assert "database unavailable" in rec.log()
        summary = json.loads((rec.run_dir() / "summary.json").read_text())
        assert summary["run"]["db_outages"] >= 1 and summary["totals"]["db_rows"] == 15
    finally:
        pg.close()
        shutil.rmtree(home, ignore_errors=True)


def test_sigterm_mid_run_flushes_rows_acks_them_and_writes_the_summary(pg, db_url, core, start):
    # Rows would wait a minute before being written: only the shutdown writes them.
    rec = start(core, db_url, "--db-flush-s", "60", "--db-batch", "1000")
    core.wait_joined()
    send_stream(core, "cam0", range(6))
    run = wait_for(lambda: next(iter(rec.run_dirs()), None), timeout=10, what="the run folder")
    wait_for(lambda: (run / "drift.csv").exists() and len(csv_seqs(run / "drift.csv")) == 6, 10, "drift.csv rows")
    with pg.connect(db_url) as conn:
        assert count_frames(conn) == 0 and "cam0" not in core.acked
        rec.proc.send_signal(signal.SIGTERM)
        assert rec.wait() == 0, rec.log()
        assert stored_seqs(conn, run_id_of(run)) == list(range(6))
        embedded = "SELECT summary->'totals'->'frames'->>'embedded' FROM runs WHERE id = %s"
        assert conn.execute(embedded, (run_id_of(run),)).fetchone() == ("6",)
    assert core.acked["cam0"] == (5, False) and len(core.messages(Bye)) == 1  # the last acks, then Bye
    summary = json.loads((run / "summary.json").read_text())["streams"]["cam0"]
    assert summary["records"] == 6 and not summary["ended"] and summary["counts_from"] == "last_record"
    assert list(load_run_embeddings(run)[2]) == list(range(6))  # the partial batch too
    assert "received SIGTERM" in rec.log()


# --------------------------------------------------------------------------------------
# What cannot start a recorder


def test_a_run_folder_whose_name_the_database_has_is_refused(pg, db_url, core, start, tmp_path):
    # A run's folder and its row have the same name: one taken in the database (another runs
    # folder) is said once the core has welcomed the recorder, never renamed behind the caller's back.
    db = Database.open(db_url, wait_s=5)
    db.claim_run("20260107_143022", datetime.now(UTC))
    db.close()
    rec = start(core, db_url, "--run-dir", str(tmp_path / "runs" / "20260107_143022"))
    assert rec.wait() == 2, rec.log()
    assert "cannot start: the database already has a run named '20260107_143022'" in rec.log()
    assert "Traceback" not in rec.log()
    assert not (tmp_path / "runs" / "20260107_143022").exists()


@pytest.mark.parametrize("flag,endpoint", [("--core", "tcp://nonsense")])
def test_an_address_that_does_not_parse_exits_2_before_a_run_is_claimed(pg, db_url, start, flag, endpoint):
    rec = start(None, db_url, flag, endpoint)
    assert rec.wait() == 2, rec.log()
    errors = [line for line in rec.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot start: cannot connect" in errors[0], rec.log()
    assert "Traceback" not in rec.log()
    assert not rec.runs.exists() or not rec.run_dirs()
    with psycopg.connect(db_url) as conn:  # not even migrated: the database was not touched
        assert conn.execute("SELECT to_regclass('runs') IS NULL").fetchone() == (True,)


def test_no_database_url_starts_an_embedded_server_in_the_runs_folder(core, start):
    home = pg_home()
    try:
        rec = start(core, "", runs=home)
        wait_for(core.joined, 30, "the recorder's Ready")
        send_stream(core, "cam0", range(3), frames=False)
        end_and_stop(core, rec, "cam0", 2, {"embedded": 3})
        assert "embedded PostgreSQL in %s" % (home / ".pgdata") in rec.log()
        (run,) = [p for p in home.iterdir() if not p.name.startswith(".")]
        assert json.loads((run / "summary.json").read_text())["totals"]["db_rows"] == 3
        # The last process using it has gone: the server was stopped, and its data kept.
        assert (home / ".pgdata" / "PG_VERSION").exists() and not (home / ".pgdata" / "postmaster.pid").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_unreachable_database_exits_with_a_clear_error_and_no_password(core, start):
    rec = start(core, "postgresql://user:s3cret@127.0.0.1:1/x", "--db-connect-timeout", "1")
    assert rec.wait() == 2
    log = rec.log()
    assert "127.0.0.1" in log and "port=1" in log and "database=x" in log
    assert "s3cret" not in log
    assert not rec.runs.exists() or not any(rec.runs.iterdir())
    assert not core.messages(Hello)  # it said nothing to the core: it could not have recorded anything


def test_unreachable_database_error_in_this_process_has_no_password():
    with pytest.raises(DatabaseUnavailable) as info:
        Database.open("postgresql://alice:s3cret@127.0.0.1:1/frames", wait_s=0.2)
    message = str(info.value)
    assert "host=127.0.0.1 port=1 database=frames" in message
    assert "s3cret" not in message
    assert "s3cret" not in repr(info.value.__cause__) and "s3cret" not in repr(info.value.__context__)


# --------------------------------------------------------------------------------------
# The database layer in this process


def make_row(run_id: int, seq: int, dim: int = DIM) -> FrameRow:
    v = np.random.default_rng(seq).standard_normal(dim).astype(np.float32)
    return FrameRow(
        run_id,
        "cam0",
        seq,
        T0 + seq,
        None if seq == 0 else 0.5,
        None if seq == 0 else 0.5,
        v / np.linalg.norm(v),
        None,
        "w",
    )


def test_rows_written_twice_are_stored_once(tmp_path, db_url):
    db = Database.open(db_url, wait_s=5)
    run_id = db.claim_run("replay", datetime.now(UTC))
    assert run_id is not None
    assert db.claim_run("replay", datetime.now(UTC)) is None  # names are unique
    writer = FrameWriter(db, Spool(tmp_path / "spool"), run_id=run_id, batch_rows=4, executor=writer_thread())
    writer.set_model("m", DIM)
    for seq in range(6):
        writer.add(make_row(run_id, seq))
    writer.flush()
    for seq in range(3, 9):  # 3..5 again, as a replayed spool would
        writer.add(make_row(run_id, seq))
    assert writer.close(1.0)
    assert writer.written == {"cam0": 9}
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT seq) FROM frames").fetchone() == (9, 9)
        assert conn.execute("SELECT model, dim FROM runs WHERE id = %s", (run_id,)).fetchone() == ("m", DIM)
    # Another model's embedding size cannot go into this database's frames table.
    with pytest.raises(DatabaseRefused, match=r"vector\(512\).*vector\(768\)"):
        Database.open(db_url, wait_s=5).ensure_frames(768)
    db.close()


def test_a_locked_frames_table_spools_the_rows_instead_of_hanging(tmp_path, db_url):
    """Someone holds a lock on frames (VACUUM FULL, REINDEX without CONCURRENTLY): the batch gives
    up after the lock timeout, its rows wait in the spool, and they are written once it is gone."""
    db = Database.open(db_url, wait_s=5)
    db.lock_timeout_s = 0.5
    run_id = db.claim_run("locked", datetime.now(UTC))
    assert run_id is not None
    writer = FrameWriter(db, Spool(tmp_path / "spool"), run_id=run_id, batch_rows=4, retry_max=0.5, executor=Inline())
    writer.set_model("m", DIM)
    for seq in range(4):
        writer.add(make_row(run_id, seq))
    assert writer.written == {"cam0": 4}
    with psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE frames IN ACCESS EXCLUSIVE MODE")  # held until this transaction ends
        start = time.monotonic()
        for seq in range(4, 8):
            writer.add(make_row(run_id, seq))
        assert time.monotonic() - start < 5  # gave up waiting: the receive loop goes on
        assert writer.outages == 1 and writer.spooled == 4
        locker.rollback()
    assert writer.close(10.0)
    assert writer.written == {"cam0": 8} and writer.spooled == 0
    with psycopg.connect(db_url) as conn:
        assert [s for (s,) in conn.execute("SELECT seq FROM frames ORDER BY seq")] == list(range(8))
    db.close()


def test_a_row_the_database_refuses_during_a_run_is_quarantined(tmp_path, db_url):
    """A NaN in a vector: the server refuses the batch (SQLSTATE 22000). The row is found, set aside,
    and every other row of the batch is written."""
    db = Database.open(db_url, wait_s=5)
    run_id = db.claim_run("poisoned", datetime.now(UTC))
    assert run_id is not None
    writer = FrameWriter(db, Spool(tmp_path / "db_spool.msgpack"), run_id=run_id, batch_rows=8, executor=Inline())
    writer.set_model("m", DIM)
    for seq in range(16):
        row = make_row(run_id, seq)
        if seq == 5:
            row = row._replace(embedding=np.full(DIM, np.nan, np.float32))
        writer.add(row)
        writer.tick()
    assert writer.close(5.0) and writer.fatal is None and writer.quarantined == 1
    with psycopg.connect(db_url) as conn:
        assert [s for (s,) in conn.execute("SELECT seq FROM frames ORDER BY seq")] == [s for s in range(16) if s != 5]
    records, _ = Spool(tmp_path / "db_quarantine.msgpack").read_batch(10)
    assert [r["seq"] for r in records] == [5]
    db.close()


def test_rows_spooled_by_an_earlier_recorder_are_written_at_the_next_start(tmp_path, db_url, core, start):
    db = Database.open(db_url, wait_s=5)
    run_id = db.claim_run("crashed", datetime.now(UTC))
    assert run_id is not None
    left = tmp_path / "runs" / "crashed"
    left.mkdir(parents=True)
    spool = Spool(left / "db_spool.msgpack")
    spool.append(to_spool(make_row(run_id, seq)) for seq in range(4))
    spool.close()  # as a recorder that exited while the database was away leaves it
    db.close()
    rec = start(core, db_url)
    wait_for(core.joined, 20, "the recorder's Ready")
    core.stop()
    assert rec.wait() == 0, rec.log()
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM frames WHERE run_id = %s", (run_id,)).fetchone() == (4,)
    assert not (left / "db_spool.msgpack").exists()
