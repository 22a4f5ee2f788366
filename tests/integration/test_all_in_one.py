"""`python -m encoders --stream URL ...`: the seed's command, now five processes underneath."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import msgpack
import psutil
import psycopg
import pytest

from encoders.shared import messages
from encoders.shared.messages import MetricsRecord, rows_of

from ..conftest import free_port, wait_for


@pytest.fixture
def pisim(service):
    port = free_port()
    service("pisim", "--port", str(port), "--fps", "30", "--width", "320", "--height", "240")
    url = f"http://127.0.0.1:{port}/stream.mjpg"
    import httpx

    wait_for(lambda: _healthy(httpx, port), 20, "pisim to answer /health")
    return url


def _healthy(httpx, port) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def leftovers(marker: str) -> list[str]:
    """Processes still running whose environment or command line carries this test's folder."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid == psutil.Process().pid:
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if marker in cmd or any(marker in v for v in env.values()):
            found.append(f"{proc.pid}: {cmd}")
    return found


def only_run(runs):
    runs_found = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs_found) == 1, runs_found
    return runs_found[0]


@pytest.mark.timeout(240)
def test_runs_to_max_frames_with_the_embedded_database_and_leaves_nothing_behind(service, tiny_model, pisim, tmp_path):
    runs = tmp_path / "runs"
    env = {**tiny_model, "ENCODERS_SNAPSHOT_INTERVAL": "0.5", "ENCODERS_EMBEDDING_INTERVAL": "20"}
    run = service(
        "--stream",
        pisim,
        "--no-display",
        "--max-frames",
        "60",
        "--workers",
        "2",
        "--lossless",
        "--runs-dir",
        str(runs),
        env=env,
    )
    assert run.wait(180) == 0, run.output()[-4000:]
    run_dir = only_run(runs)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json",
        "drift.csv",
        "embeddings",
        "snapshots",
        "summary.json",
    ]
    summary = json.loads((run_dir / "summary.json").read_text())["streams"]["cam0"]
    assert summary["frames"]["published"] == 60 and summary["frames"]["embedded"] == 60
    config = json.loads((run_dir / "config.json").read_text())
    assert "ENCODERS_MODEL" not in json.dumps(config)  # settings by name, not raw environment
    assert json.dumps(config).count("tiny-clip") >= 1
    # The embedded PostgreSQL kept the rows, and is reused by the next run.
    assert (runs / ".pgdata").is_dir()
    assert not leftovers(str(runs)), leftovers(str(runs))
    from encoders.shared.storage.embedded import database

    with database("", str(runs)) as url, psycopg.connect(url) as conn:
        counted = conn.execute(
            "SELECT count(*) FROM frames f JOIN runs r ON r.id = f.run_id WHERE r.name = %s", (run_dir.name,)
        ).fetchone()
        ended = conn.execute("SELECT ended_at IS NOT NULL FROM runs WHERE name = %s", (run_dir.name,)).fetchone()
    assert counted == (60,) and ended == (True,)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_flushes_everything_and_exits_cleanly(service, tiny_model, pisim, tmp_path, sig):
    runs = tmp_path / "runs"
    run = service("--stream", pisim, "--no-display", "--runs-dir", str(runs), env=tiny_model)
    wait_for(
        lambda: (
            list(runs.glob("*/drift.csv")) and len(next(iter(runs.glob("*/drift.csv"))).read_text().splitlines()) > 10
        ),
        120,
        "frames to be recorded",
    )
    # The services meet on ipc:// endpoints in the run's private folder: none listens on a port
    # that another process could have taken between its choice and its bind. The one TCP port
    # each has is its Prometheus metrics' (any free one here), and each says which.
    children = psutil.Process(run.proc.pid).children(recursive=True)
    assert len(children) >= 4
    metrics_ports = {int(p) for p in re.findall(r"Prometheus metrics on http://127\.0\.0\.1:(\d+)/", run.output())}
    for child in children:
        listening = {c.laddr.port for c in child.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert listening <= metrics_ports, child.cmdline()
    run.proc.send_signal(sig)
    assert run.wait(120) == 0, run.output()[-4000:]
    run_dir = only_run(runs)
    summary = json.loads((run_dir / "summary.json").read_text())["streams"]["cam0"]
    rows = len((run_dir / "drift.csv").read_text().splitlines()) - 1
    assert summary["frames"]["embedded"] == summary["db_rows"] == rows > 10
    f = summary["frames"]
    assert f["published"] == f["embedded"] + f["dropped"] + f["skipped"] + f["lost"]
    assert not leftovers(str(runs)), leftovers(str(runs))


@pytest.mark.timeout(60)
def test_no_save_writes_nothing(service, tiny_model, pisim, tmp_path):
    runs = tmp_path / "runs"
    run = service(
        "--stream", pisim, "--no-display", "--no-save", "--max-frames", "20", "--runs-dir", str(runs), env=tiny_model
    )
    assert run.wait(50) == 0, run.output()[-4000:]
    assert not runs.exists()
    out = run.output()
    # The core held nothing for a recorder, and nothing had to be stopped by signal.
    assert "only published (--no-recorder)" in out and "still running" not in out


@pytest.mark.timeout(60)
def test_connection_test_passes_against_the_stream_and_fails_with_the_reason(service, pisim):
    ok = service("--stream", pisim, "--test")
    assert ok.wait(30) == 0, ok.output()
    assert "OK" in ok.output()
    closed = free_port()
    bad = service("--stream", f"http://127.0.0.1:{closed}/stream.mjpg", "--test")
    assert bad.wait(30) != 0
    assert "refused" in bad.output().lower()


@pytest.mark.timeout(60)
def test_stream_is_required_and_help_lists_the_seed_options(service):
    missing = service("--no-display")
    assert missing.wait(20) == 2
    assert "--stream" in missing.output()
    helptext = service("--help")
    assert helptext.wait(20) == 0
    for option in ("--stream", "--no-display", "--no-plot", "--no-save", "--test", "--duration", "--max-frames"):
        assert option in helptext.output()


@pytest.mark.timeout(60)
def test_unfetchable_weights_say_what_to_set(service, tmp_path):
    enc = service(
        "encode", "--model", "ViT-B-32", "--pretrained", "openai", "--device", "cpu", env={"HF_HUB_OFFLINE": "1"}
    )
    assert enc.wait(50) == 2
    assert "ENCODERS_PRETRAINED" in enc.output()


@pytest.mark.timeout(180)
@pytest.mark.display
def test_q_in_the_window_ends_the_run_with_everything_flushed(service, tiny_model, pisim, tmp_path, display):
    """The seed's keyboard control: Q in the video window quits, and the run still stores everything."""
    import subprocess

    runs = tmp_path / "runs"
    run = service("--stream", pisim, "--runs-dir", str(runs), env={**tiny_model, "DISPLAY": display})

    def xdotool(*args: str) -> str:
        env = {"DISPLAY": display, "PATH": "/usr/bin:/bin"}
        return subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=10).stdout

    def window():
        return xdotool("search", "--onlyvisible", "--name", "^encoders$").split()

    ids = wait_for(window, 90, "the viewer's window")
    wait_for(
        lambda: (
            list(runs.glob("*/drift.csv")) and len(next(iter(runs.glob("*/drift.csv"))).read_text().splitlines()) > 5
        ),
        60,
        "frames to be recorded",
    )
    xdotool("windowactivate", "--sync", ids[0])
    xdotool("key", "--window", ids[0], "q")
    assert run.wait(90) == 0, run.output()[-4000:]
    assert "viewer closed: stopping the run" in run.output()
    run_dir = only_run(runs)
    summary = json.loads((run_dir / "summary.json").read_text())["streams"]["cam0"]
    assert summary["frames"]["embedded"] == summary["db_rows"] > 5
    assert not leftovers(str(runs)), leftovers(str(runs))


def drift_lines(runs) -> int:
    found = list(runs.glob("*/drift.csv"))
    return len(found[0].read_text().splitlines()) - 1 if found else 0


@pytest.mark.timeout(300)
def test_the_run_survives_a_sigkill_of_each_service_and_notes_the_restarts(service, tiny_model, pisim, tmp_path):
    """Like compose, the all-in-one starts again a service that dies; the run goes on, nothing
    recorded is lost, the counts add up, and summary.json says what was restarted."""
    runs = tmp_path / "runs"
    run = service("--stream", pisim, "--no-display", "--workers", "2", "--runs-dir", str(runs), env=tiny_model)
    wait_for(lambda: drift_lines(runs) > 10, 120, "frames to be recorded")
    launcher = psutil.Process(run.proc.pid)

    def running(command: str) -> list[psutil.Process]:
        """The launcher's children running `python -m encoders COMMAND`."""
        return [c for c in launcher.children() if c.cmdline()[3:4] == [command]]

    def kill_one(command: str) -> None:
        """SIGKILL it; it is started again, and frames are recorded after."""
        victim = running(command)[0]
        victim.kill()
        victim.wait(10)
        wait_for(lambda: any(c.pid != victim.pid for c in running(command)), 30, f"{command} to be started again")
        seen = drift_lines(runs)
        wait_for(lambda: drift_lines(runs) > seen + 5, 120, f"frames recorded after {command} restarted")

    for command in ("encode", "ingest", "metrics", "record"):
        kill_one(command)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(120) == 0, run.output()[-4000:]
    run_dir = only_run(runs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["restarts"] == {"encoder0": 1, "ingest0": 1, "metrics": 1, "recorder": 1}, run.output()[
        -6000:
    ]
    cam0 = summary["streams"]["cam0"]
    f = cam0["frames"]
    assert f["published"] == f["embedded"] + f["dropped"] + f["skipped"] + f["lost"], f
    rows = len((run_dir / "drift.csv").read_text().splitlines()) - 1
    assert f["embedded"] == cam0["db_rows"] == rows, json.dumps({k: cam0[k] for k in ("frames", "lives", "db_rows")})
    assert not leftovers(str(runs)), leftovers(str(runs))


@pytest.mark.timeout(120)
def test_a_public_bind_host_needs_keys_and_with_them_every_link_is_encrypted(service, tiny_model, pisim, tmp_path):
    from encoders.shared import keys

    args = ("--stream", pisim, "--no-display", "--no-save", "--max-frames", "20", "--bind-host", "0.0.0.0")
    refused = service(*args, env=tiny_model)
    assert refused.wait(60) == 2
    assert "can be reached from other machines" in refused.output() and "ENCODERS_KEYS" in refused.output()
    keys.init(tmp_path / "keys")
    run = service(*args, env={**tiny_model, "ENCODERS_KEYS": str(tmp_path / "keys")})
    assert run.wait(90) == 0, run.output()[-4000:]
    out = run.output()
    assert "serving the keys of" in out and "INSECURE" not in out
    assert "'published': 20, 'embedded': 20" in out, out[-3000:]


def children_running(launcher: psutil.Process, command: str) -> list[psutil.Process]:
    """The launcher's children running `python -m encoders COMMAND`."""
    return [c for c in launcher.children() if c.cmdline()[3:4] == [command]]


def adds_up(frames: dict) -> bool:
    outcomes = ("embedded", "dropped", "skipped", "lost", "not_stored")
    return frames["published"] == sum(frames[k] for k in outcomes)


@pytest.mark.timeout(300)
def test_a_recorder_that_hangs_through_the_drain_is_started_again_and_stores_everything(
    service, tiny_model, pisim, tmp_path
):
    """Issue #22: a hung recorder at the final drain left records in a folder the command then
    removed. A child that stops answering its health check is killed and started again, also
    while the pipeline drains: the new recorder takes the records, and nothing is left over."""
    runs = tmp_path / "runs"
    args = ("--stream", pisim, "--no-display", "--runs-dir", str(runs), "--hang-after", "10")
    run = service(*args, env=tiny_model)
    wait_for(lambda: drift_lines(runs) > 10, 120, "frames to be recorded")
    launcher = psutil.Process(run.proc.pid)
    (recorder,) = children_running(launcher, "record")
    recorder.suspend()  # SIGSTOP: alive, answering nothing
    try:
        run.proc.send_signal(signal.SIGINT)
        assert run.wait(180) == 0, run.output()[-4000:]
    finally:
        if recorder.is_running():
            recorder.resume()
    out = run.output()
    assert "recorder has not answered" in out and "hung; killing it" in out, out[-4000:]
    run_dir = only_run(runs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["restarts"] == {"recorder": 1}
    cam0 = summary["streams"]["cam0"]
    rows = len((run_dir / "drift.csv").read_text().splitlines()) - 1
    assert cam0["frames"]["embedded"] == cam0["db_rows"] == rows and adds_up(cam0["frames"]), cam0["frames"]
    assert not (runs / ".core" / "records.spool").exists()
    assert not leftovers(str(runs)), leftovers(str(runs))


def spooled_seqs(spool) -> set[tuple[str, int]]:
    """(stream, seq) of every record in the core's spool of records (shared/spool.py: msgpack values)."""
    out = set()
    with open(spool, "rb") as f:
        for value in msgpack.Unpacker(f, raw=False):
            if isinstance(value, dict) and "parts" in value:
                for row in rows_of(messages.decode(value["parts"])):
                    if isinstance(row, MetricsRecord):
                        out.add((row.stream, row.seq))
    return out


@pytest.mark.timeout(360)
@pytest.mark.parametrize("then", ["next start", "runs repair"])
def test_records_no_recorder_took_at_the_end_outlive_the_command_and_are_stored_into_their_run(
    service, tiny_model, pisim, tmp_path, then
):
    """Issue #22: when the drain cannot deliver (a recorder that hangs, and is not watched here),
    the core's records are kept in the runs folder, the message names that path, and the next
    start (or `encoders runs repair`) stores them into the run they are for, which then agrees
    with its rows."""
    runs = tmp_path / "runs"
    spool = runs / ".core" / "records.spool"
    args = ("--stream", pisim, "--no-display", "--runs-dir", str(runs), "--hang-after", "0", "--drain-timeout", "3")
    first = service(*args, env=tiny_model)
    wait_for(lambda: drift_lines(runs) > 10, 120, "frames to be recorded")
    launcher = psutil.Process(first.proc.pid)
    (recorder,) = children_running(launcher, "record")
    (core,) = children_running(launcher, "metrics")
    recorder.suspend()
    try:
        first.proc.send_signal(signal.SIGINT)
        core.wait(120)  # the drain failed; the core, stopped by signal, spooled what it held
    finally:
        recorder.resume()  # it finishes its run on the launcher's SIGTERM
    assert first.wait(120) == 1, first.output()[-4000:]
    out = first.output()
    assert f"kept in {spool}" in out and "runs repair" in out, out[-4000:]
    assert spool.stat().st_size > 0
    kept = spooled_seqs(spool)
    assert kept, "no record in the spool"
    run_dir = only_run(runs)
    rows_before = len((run_dir / "drift.csv").read_text().splitlines()) - 1
    ended = json.loads((run_dir / "summary.json").read_text())["run"]["ended_at"]

    if then == "next start":
        second = service(*args[:5], "--max-frames", "3", env=tiny_model)
        assert second.wait(180) == 0, second.output()[-4000:]
        said = second.output()
    else:
        repair = service("runs", "repair", "--runs-dir", str(runs))
        assert repair.wait(120) == 0, repair.output()
        said = repair.output()
    assert f"stored into run {run_dir.name}" in said, said[-3000:]
    assert not spool.exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    cam0 = summary["streams"]["cam0"]
    rows = len((run_dir / "drift.csv").read_text().splitlines()) - 1
    # The records kept are in the run now. Some may have been stored already: the recorder, woken, takes
    # what was queued for it before it finishes its run (then rows == rows_before).
    assert rows >= rows_before, (rows, rows_before)
    assert cam0["frames"]["embedded"] == cam0["db_rows"] == rows and adds_up(cam0["frames"]), cam0["frames"]
    assert summary["run"]["ended_at"] == ended  # closed as it had ended
    from encoders.shared.storage.embedded import database

    with database("", str(runs)) as url, psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM frames f JOIN runs r ON r.id = f.run_id WHERE r.name = %s", (run_dir.name,)
        ).fetchone()
        seqs = conn.execute(
            "SELECT f.stream, f.seq FROM frames f JOIN runs r ON r.id = f.run_id WHERE r.name = %s", (run_dir.name,)
        ).fetchall()
    assert stored == (rows,)
    assert kept <= set(seqs), sorted(kept - set(seqs))[:10]  # every record the core kept, stored
    assert not leftovers(str(runs)), leftovers(str(runs))


@pytest.fixture
def small_disk(tmp_path):
    """A disk of its own for the runs folder (a tmpfs of 256 MB), to fill up; unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"this test fills a disk of its own: mounting a tmpfs needs root ({done.stderr.decode()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder) -> None:
    """Write into ``folder`` until its disk is full. Unbuffered: a buffered file keeps the part of the
    last block that did not fit and fails again when closed (ENOSPC out of ``with``), which happened
    whenever the space left was not a whole number of blocks."""
    block = bytes(1 << 20)
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass


@pytest.mark.tmpfs
@pytest.mark.timeout(420)
def test_a_runs_disk_that_fills_up_mid_run_says_so_in_one_line_and_loses_nothing(
    service, tiny_model, pisim, small_disk
):
    """Issue #22: a full runs disk lost 77 records and printed tracebacks. While it is full the
    rows wait unacknowledged (the core holds their records) and every message names the cause
    and the path; once there is room again they are stored, and the run agrees with its rows."""
    runs = small_disk / "runs"
    run = service("--stream", pisim, "--no-display", "--runs-dir", str(runs), env=tiny_model)
    wait_for(lambda: drift_lines(runs) > 10, 120, "frames to be recorded")
    fill(small_disk)
    wait_for(lambda: "No space left on device" in run.output(), 120, "the recorder to find the disk full")
    (small_disk / "filler").unlink()
    seen = drift_lines(runs)
    wait_for(lambda: drift_lines(runs) > seen + 10, 120, "frames recorded once there is room again")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(180) == 0, run.output()[-4000:]
    out = run.output()
    assert "Traceback" not in out, out[out.index("Traceback") - 2000 :][:6000]
    said = [line for line in out.splitlines() if "No space left on device" in line]
    assert said and all(str(small_disk) in line for line in said), "\n".join(said)
    run_dir = only_run(runs)
    cam0 = json.loads((run_dir / "summary.json").read_text())["streams"]["cam0"]
    rows = len((run_dir / "drift.csv").read_text().splitlines()) - 1
    assert cam0["frames"]["embedded"] == cam0["db_rows"] == rows and adds_up(cam0["frames"]), cam0["frames"]
    assert cam0["frames"]["not_stored"] == 0 and cam0["frames"]["lost"] == 0, cam0["frames"]
    assert not (runs / ".core" / "records.spool").exists()
