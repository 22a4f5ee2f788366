"""The recorder across restarts, as real processes against a fake core and a real PostgreSQL.

A recorder killed mid-run and started again resumes its run (the core names it in its
Welcome) with files that agree with its rows; one started with no such run closes the run
left open, as `encoders runs repair` does; records sent again are stored and written once;
counts of two lives of the core add up, and an epoch started by a later life counts what a crashed
one never released; a bad spooled row is set aside; a second recorder is refused unless it takes over.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import numpy as np

from encoders.logging_utils import load_run_embeddings
from encoders.services.recorder.rows import to_spool
from encoders.shared.messages import EndOfStream, FrameCounts, Hello, Ready, StreamStart
from encoders.shared.spool import Spool
from encoders.shared.storage.connection import Database
from encoders.shared.storage.frames import FrameRow

from ..conftest import wait_for
from ..fake_core import FakeCore
from .recorder_helpers import (
    DIM,
    T0,
    csv_seqs,
    make_record,
    run_id_of,
    send_stream,
    stored_seqs,
    vector,
)


def run_row(pg, url: str, run_id: int):
    with pg.connect(url) as conn:
        return conn.execute("SELECT name, ended_at, summary FROM runs WHERE id = %s", (run_id,)).fetchone()


def readies(core: FakeCore) -> int:
    return len(core.messages(Ready))


def killed_mid_run(core: FakeCore, start, url: str, *args: str):
    """A recorder that committed cam0's rows 0-7 (batches of 4), wrote 10 lines of drift.csv, and was killed."""
    rec = start(core, url, "--db-flush-s", "60", "--db-batch", "4", *args)
    core.wait_joined()
    send_stream(core, "cam0", range(8))
    core.wait_acked("cam0", 7)
    send_stream(core, "cam0", range(8, 10))  # fewer than a batch: they wait in memory
    run = rec.run_dir()
    wait_for(lambda: csv_seqs(run / "drift.csv") == list(range(10)), 10, "drift.csv's ten lines on disk")
    rec.kill()
    gone(core)
    return rec, run


def gone(core: FakeCore) -> None:
    """Until the core counts a killed recorder gone (silent for the heartbeat timeout): a recorder
    that says Hello before then is refused, as a second one would be."""
    wait_for(lambda: not core.joined(), 10, "the core to count the killed recorder gone")


def assert_files_agree(run, seqs) -> None:
    assert csv_seqs(run / "drift.csv") == list(seqs)
    emb, ts, idx = load_run_embeddings(run)
    assert list(idx) == list(seqs)
    np.testing.assert_array_equal(emb, np.stack([vector("cam0", s) for s in seqs]))
    np.testing.assert_allclose(ts, [T0 + s * 0.25 for s in seqs], atol=1e-5)


def test_a_killed_recorder_resumes_its_run_with_files_that_agree_with_its_rows(pg, db_url, core, start):
    _first, run = killed_mid_run(core, start, db_url)
    run_id = run_id_of(run)
    with pg.connect(db_url) as conn:
        assert stored_seqs(conn, run_id) == list(range(8))  # more lines in drift.csv than rows
    second = start(core, db_url)
    wait_for(lambda: readies(core) == 2, 20, "the second recorder's Ready")
    ready = core.messages(Ready)[1]
    assert ready.run == run.name and ready.stored == {"cam0": 7}  # the core learns what is stored
    assert core.messages(Hello)[1].run == ""  # a new process: the core names the run in its Welcome
    # The core sends again what has no ack (8, 9), then what comes next.
    send_stream(core, "cam0", range(10, 14))
    core.deliver(EndOfStream("cam0", 13, {"published": 14, "embedded": 14, "dropped": 0, "skipped": 0, "lost": 0}))
    core.wait_acked("cam0", 13, ended=True)
    core.stop()
    assert second.wait() == 0, second.log()
    assert second.run_dir() == run  # the same run, the same folder
    assert "stream cam0: 8 rows stored, files rewritten from them" in second.log()
    with pg.connect(db_url) as conn:
        assert stored_seqs(conn, run_id) == list(range(14))  # nothing lost, nothing doubled
    assert_files_agree(run, range(14))
    top = json.loads((run / "summary.json").read_text())
    cam0 = top["streams"]["cam0"]
    assert cam0["records"] == 14 and cam0["db_rows"] == 14 and top["run"]["db_rows"] == 14
    assert cam0["frames"]["embedded"] == 14 and cam0["first_seq"] == 0 and cam0["last_seq"] == 13
    assert cam0["snapshots"] == len(list((run / "snapshots").iterdir()))
    _name, ended_at, summary = run_row(pg, db_url, run_id)
    assert ended_at is not None and summary["totals"]["db_rows"] == 14
    assert len(json.loads((run / "config.json").read_text())["run"]["resumed_at"]) == 1


def test_a_record_sent_again_after_the_recorder_restarted_is_stored_once_and_written_once(pg, db_url, core, start):
    core.ignore_acks = True  # the core keeps (and sends again) every record, as if no ack had reached it
    first = start(core, db_url)
    wait_for(core.joined, 20, "the recorder's Ready")
    send_stream(core, "cam0", range(10), frames=False)
    core.wait_acked("cam0", 9)
    run = first.run_dir()
    first.kill()
    gone(core)
    second = start(core, db_url)
    wait_for(lambda: readies(core) == 2, 20, "the second recorder's Ready")
    send_stream(core, "cam0", range(10, 12), frames=False)
    core.deliver(EndOfStream("cam0", 11, {"embedded": 12}))
    core.wait_acked("cam0", 11, ended=True)
    core.stop()
    assert second.wait() == 0, second.log()
    with pg.connect(db_url) as conn:
        assert stored_seqs(conn, run_id_of(run)) == list(range(12))
    assert_files_agree(run, range(12))
    messages = json.loads((run / "summary.json").read_text())["run"]["messages"]
    assert messages["repeated_records"] >= 10


def test_a_run_left_open_is_closed_by_the_next_recorder(pg, db_url, core, start):
    _, left = killed_mid_run(core, start, db_url)
    core.restart("core-2", forget=True)  # a core with no memory of that run
    second = start(core, db_url)
    wait_for(core.joined, 20, "the second recorder's Ready")
    left_id = run_id_of(left)
    wait_for(lambda: run_row(pg, db_url, left_id)[1] is not None, 20, "the left run ended")
    assert_files_agree(left, range(8))  # rewritten from the rows
    summary = json.loads((left / "summary.json").read_text())
    cam0 = summary["streams"]["cam0"]
    assert cam0["frames"]["embedded"] == 8 and cam0["db_rows"] == 8 and cam0["records"] == 8
    assert summary["run"]["db_rows"] == 8 and summary["run"]["closed_by"].startswith("repair")
    assert datetime.fromisoformat(summary["run"]["ended_at"]) == datetime.fromtimestamp(T0 + 7 * 0.25, tz=UTC)
    assert not (left / ".recorder.lock").exists()
    new = [p for p in second.run_dirs() if p != left]
    assert len(new) == 1 and run_row(pg, db_url, run_id_of(new[0]))[1] is None  # its own run goes on
    core.stop()
    assert second.wait() == 0, second.log()


def repair(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "encoders",
            "runs",
            "repair",
            "--database-url",
            url,
            "--runs-dir",
            str(tmp_path / "runs"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_encoders_runs_repair_closes_a_run_left_open_and_leaves_a_live_one(pg, db_url, core, start, tmp_path):
    _, left = killed_mid_run(core, start, db_url)
    core.restart("core-2", forget=True)
    live = start(core, db_url, "--db-flush-s", "60")  # records a run of its own meanwhile; closes the left one too
    wait_for(core.joined, 20, "the live recorder's Ready")
    (own,) = [p for p in live.run_dirs() if p != left]
    wait_for(lambda: run_row(pg, db_url, run_id_of(left))[1] is not None, 20, "the left run ended")
    out = repair(tmp_path, db_url)
    assert out.returncode == 0, out.stderr
    assert f"{own.name}: left open: a live recorder is recording it" in out.stdout
    core.stop()
    assert live.wait() == 0, live.log()
    out = repair(tmp_path, db_url)
    assert out.returncode == 0 and out.stdout.strip() == "no run is left open", out
    assert repair(tmp_path, db_url, "--run", "nonesuch").returncode == 2


def test_encoders_runs_repair_by_hand(pg, db_url, core, start, tmp_path):
    _, left = killed_mid_run(core, start, db_url)
    out = repair(tmp_path, db_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{left.name}: closed: 8 rows, ended at "), out.stdout
    assert_files_agree(left, range(8))
    _name, ended_at, summary = run_row(pg, db_url, run_id_of(left))
    assert ended_at == datetime.fromtimestamp(T0 + 7 * 0.25, tz=UTC)
    assert summary["totals"]["frames"]["embedded"] == 8 and summary["streams"]["cam0"]["db_rows"] == 8
    assert json.loads((left / "summary.json").read_text()) == json.loads(json.dumps(summary))
    out = repair(tmp_path, db_url, "--run", left.name)
    assert out.returncode == 0 and "has ended already" in out.stdout


def test_a_poisoned_spooled_row_goes_to_quarantine_and_the_rest_is_replayed(pg, db_url, core, start, tmp_path):
    db = Database.open(db_url, wait_s=5)
    run_id = db.claim_run("poisoned", datetime.now(UTC))
    assert run_id is not None
    db.close()
    left = tmp_path / "runs" / "poisoned"
    left.mkdir(parents=True)
    spool = Spool(left / "db_spool.msgpack")
    rows = [FrameRow(run_id, "cam0", s, T0 + s, None, None, vector("cam0", s), None, "w") for s in range(10)]
    rows[4] = rows[4]._replace(embedding=np.full(DIM, np.nan, np.float32))  # the server refuses a NaN
    spool.append(to_spool(r) for r in rows)
    spool.close()
    rec = start(core, db_url)
    wait_for(core.joined, 20, "the recorder's Ready")
    core.stop()
    assert rec.wait() == 0, rec.log()
    with pg.connect(db_url) as conn:
        assert stored_seqs(conn, run_id) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert not (left / "db_spool.msgpack").exists()
    quarantined, _ = Spool(left / "db_quarantine.msgpack").read_batch(10)
    assert [r["seq"] for r in quarantined] == [4]
    assert rec.log().count("refused a row for good") == 1


def test_counts_of_two_lives_of_the_core_add_up(pg, db_url, core, start):
    rec = start(core, db_url)
    wait_for(core.joined, 20, "the recorder's Ready")

    def counts(n: int) -> FrameCounts:
        return {"published": n, "embedded": n, "dropped": 0, "skipped": 0, "lost": 0}

    for seq in range(5):
        core.deliver(make_record("cam0", seq, counts=counts(seq + 1)))
    core.wait_acked("cam0", 4)
    core.restart("core-2")  # a new life: it counts from zero, and asks the recorder to say Hello again
    wait_for(lambda: readies(core) == 2, 20, "the Ready of the session's new life")
    run = rec.run_dir()
    assert core.messages(Hello)[-1].run == run.name and core.messages(Ready)[-1].stored == {"cam0": 4}
    for i, seq in enumerate(range(5, 10)):
        core.deliver(make_record("cam0", seq, counts=counts(i + 1)))
    final: FrameCounts = {"published": 6, "embedded": 5, "dropped": 1, "skipped": 0, "lost": 0}
    core.deliver(EndOfStream("cam0", 10, final))
    core.wait_acked("cam0", 10, ended=True)
    core.stop()
    assert rec.wait() == 0, rec.log()
    top = json.loads((run / "summary.json").read_text())
    frames = top["streams"]["cam0"]["frames"]
    assert (frames["published"], frames["embedded"], frames["dropped"]) == (11, 10, 1)
    assert top["streams"]["cam0"]["db_rows"] == 10 == top["totals"]["frames"]["embedded"]
    assert set(top["streams"]["cam0"]["lives"]) == {"core-1", "core-2"}
    assert run_row(pg, db_url, run_id_of(run))[2]["totals"]["frames"]["published"] == 11


def test_epochs_started_through_the_session_count_what_a_crashed_life_of_the_core_never_released(
    pg, db_url, core, start
):
    """A camera's epochs as the core starts them: each StreamStart held, sent and acknowledged like a
    record. The first life of the core numbered 8 captures of the epoch (0-7) and released 0-4 before it
    crashed; the next life's StreamStart says so (the ingest's Hello told it), and the recorder counts
    the 3 that life never accounted for as lost."""

    def counts(n: int) -> FrameCounts:
        return {"published": n, "embedded": n, "dropped": 0, "skipped": 0, "lost": 0}

    rec = start(core, db_url)
    wait_for(core.joined, 20, "the recorder's Ready")
    core.deliver(StreamStart("cam0", 0, "http://camera"))
    for seq in range(5):
        core.deliver(make_record("cam0", seq, counts=counts(seq + 1)))
    core.wait_acked("cam0", 4)
    assert core.settled()  # the StreamStart too: covered by the records' Ack (services/metrics/delivery.py)
    core.restart("core-2")  # the crash: 5-7 were numbered, never released
    wait_for(lambda: readies(core) == 2, 20, "the Ready of the session's new life")
    core.deliver(StreamStart("cam0", 10, "http://camera", previous_core="core-1", previous_sent=8))
    for i, seq in enumerate(range(10, 13)):
        core.deliver(make_record("cam0", seq, first_seq=10, counts=counts(i + 1)))
    core.deliver(EndOfStream("cam0", 12, counts(3)))
    core.wait_acked("cam0", 12, ended=True)
    assert core.settled()
    core.stop()
    assert rec.wait() == 0, rec.log()
    assert "stream cam0 starts at seq 10 (http://camera); its ingest had sent 8 captures to the core's life core-1" in (
        rec.log()
    )
    run = rec.run_dir()
    top = json.loads((run / "summary.json").read_text())
    frames = top["streams"]["cam0"]["frames"]
    assert (frames["published"], frames["embedded"], frames["lost"]) == (11, 8, 3)
    assert frames["published"] == frames["embedded"] + frames["dropped"] + frames["skipped"] + frames["lost"]
    assert set(top["streams"]["cam0"]["lives"]) == {"core-1", "core-2"}
    with pg.connect(db_url) as conn:
        assert stored_seqs(conn, run_id_of(run)) == [*range(5), *range(10, 13)]


def test_a_second_recorder_is_refused_and_takeover_replaces_the_first(pg, db_url, core, start):
    first = start(core, db_url)
    wait_for(core.joined, 20, "the first recorder's Ready")
    send_stream(core, "cam0", range(3), frames=False)
    core.wait_acked("cam0", 2)
    second = start(core, db_url)
    assert second.wait() == 2, second.log()
    errors = [line for line in second.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "is connected already" in errors[0] and "--takeover" in errors[0]
    third = start(core, db_url, "--takeover")
    assert first.wait() == 0, first.log()  # stopped by the core, its run finished
    wait_for(lambda: readies(core) == 2, 20, "the third recorder's Ready")
    (run1,) = [p for p in first.run_dirs() if (p / "summary.json").exists()]
    assert json.loads((run1 / "summary.json").read_text())["run"]["ended_at"]
    send_stream(core, "cam0", range(3, 6), frames=False)
    core.deliver(EndOfStream("cam0", 5, {"embedded": 6}))
    core.wait_acked("cam0", 5, ended=True)
    core.stop()
    assert third.wait() == 0, third.log()
    (run3,) = [p for p in third.run_dirs() if p != run1]
    with pg.connect(db_url) as conn:
        assert stored_seqs(conn, run_id_of(run1)) == [0, 1, 2]
        assert stored_seqs(conn, run_id_of(run3)) == [3, 4, 5]
    assert run_row(pg, db_url, run_id_of(run1))[1] is not None


def test_a_run_whose_folder_is_elsewhere_is_closed_only_when_named(pg, db_url, tmp_path):
    db = Database.open(db_url, wait_s=5)
    run_id = db.claim_run("elsewhere", datetime.now(UTC))
    assert run_id is not None
    db.update_run(run_id, config={"run": {"id": run_id, "dir": "/another/machine/runs/elsewhere"}})
    db.ensure_frames(DIM)
    db.write_rows([FrameRow(run_id, "cam0", s, T0 + s, None, 0.1, vector("cam0", s), None, "w") for s in range(3)])
    db.close()
    out = repair(tmp_path, db_url)
    assert out.returncode == 0 and "elsewhere: left open: its folder (/another/machine/runs/elsewhere)" in out.stdout
    out = repair(tmp_path, db_url, "--run", "elsewhere")
    assert out.returncode == 0 and "elsewhere: closed: 3 rows" in out.stdout and "from the database alone" in out.stdout
    _, ended_at, summary = run_row(pg, db_url, run_id)
    assert ended_at == datetime.fromtimestamp(T0 + 2, tz=UTC)
    assert summary["streams"]["cam0"]["frames"]["embedded"] == 3 and summary["streams"]["cam0"]["drift"]["count"] == 3


def test_a_run_whose_recorder_died_before_its_first_rows_can_be_taken_up(db_url):
    """Seen when the all-in-one restarted a recorder hung (and killed) before it had written a row:
    the frames table did not exist yet, and every new recorder failed to resume the run, reading
    its rows ('relation "frames" does not exist'). A run with no rows yet has none to read."""
    db = Database.open(db_url)
    try:
        assert db.stored_streams(1) == {}
        assert db.each_stored_row(1, "cam0", lambda rows: None) == 0
    finally:
        db.close()
