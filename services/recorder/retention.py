"""How long recorded runs are kept: whole old runs pruned, then thumbnails, never a live run.

The policy (``ENCODERS_RETENTION_DAYS``, ``ENCODERS_RETENTION_GB``; both off by default: keep
everything) is applied by the recorder every ``ENCODERS_PRUNE_EVERY`` seconds and by
`encoders prune` (``--dry-run`` says what it would do). In this order:

1. runs that ended more than RETENTION_DAYS ago are deleted whole: their rows (frames, scene
   changes, the run) and their folder;
2. while the runs take more than RETENTION_GB (their folders, and their rows in the
   database), finished runs are deleted whole, oldest first, down to the newest finished one;
3. then, while still over, the thumbnails of the non-keyframes of the finished runs left are
   dropped, oldest run first (the keyframes keep theirs: every segment keeps its picture).

A run not ended (being recorded, or left open until `encoders runs repair` closes it) is
never touched, nor a folder a live recorder holds (runlock.py). ``plan`` is pure: what to do,
given the runs and the time; ``survey`` reads the runs, ``apply`` does it. Whatever the
policy, the recorder warns when the disk under the runs folder has less than 10% free.
"""

from __future__ import annotations

import functools
import logging
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseRefused, DatabaseUnavailable
from encoders.shared.storage.runs import RunRow, open_runs

from .policy import Policy
from .run import folder_of
from .runlock import RunLock

if TYPE_CHECKING:
    import psycopg

__all__ = ["Policy", "Pruner", "describe", "low_disk", "plan", "prune"]

log = logging.getLogger(__name__)

LOW_DISK = 0.10  # a warning below this fraction of the disk free
GB = 1e9


@dataclass(frozen=True)
class StoredRun:
    """A run as retention sees it: when, where, and what it takes."""

    id: int
    name: str
    ended_at: datetime | None
    folder: Path | None  # on this machine, if it is here
    folder_bytes: int
    db_bytes: int  # its rows in frames and scene_changes, as PostgreSQL stores them
    thumbnail_bytes: int  # of those, the thumbnails of non-keyframes: what step 3 frees

    @property
    def bytes(self) -> int:
        return self.folder_bytes + self.db_bytes


@dataclass(frozen=True)
class Action:
    kind: str  # "delete" (the whole run) or "thumbnails" (its non-keyframes')
    run: StoredRun
    frees: int
    why: str

    def describe(self) -> str:
        what = "delete run" if self.kind == "delete" else "drop the non-keyframe thumbnails of run"
        return f"{what} {self.run.name} ({self.frees / 1e6:.1f} MB): {self.why}"


def plan(runs: list[StoredRun], policy: Policy, now: datetime) -> list[Action]:
    """What to delete, in order, for ``runs`` to keep to ``policy`` at ``now`` (see the module's steps)."""
    finished = sorted((r for r in runs if r.ended_at is not None), key=lambda r: (r.ended_at, r.id))
    actions: list[Action] = []
    gone: set[int] = set()
    if policy.days > 0:
        cutoff = now - timedelta(days=policy.days)
        for run in finished:
            if run.ended_at is not None and run.ended_at < cutoff:
                actions.append(Action("delete", run, run.bytes, f"ended over {policy.days:g} days ago"))
                gone.add(run.id)
    if policy.gb > 0:
        limit = int(policy.gb * GB)
        total = sum(r.bytes for r in runs if r.id not in gone)
        left = [r for r in finished if r.id not in gone]
        for run in left[:-1]:  # down to the newest finished run
            if total <= limit:
                break
            actions.append(Action("delete", run, run.bytes, f"the runs take over {policy.gb:g} GB"))
            gone.add(run.id)
            total -= run.bytes
        for run in (r for r in left if r.id not in gone):
            if total <= limit:
                break
            if run.thumbnail_bytes:
                actions.append(Action("thumbnails", run, run.thumbnail_bytes, f"still over {policy.gb:g} GB"))
                total -= run.thumbnail_bytes
    return actions


def survey(db: Database, runs_dir: str | Path) -> list[StoredRun]:
    """Every run in the database, with what it takes here."""

    def read(conn: psycopg.Connection) -> tuple[list[tuple], dict[int, tuple[int, int]]]:
        rows = conn.execute("SELECT id, name, started_at, ended_at, model, dim, config, summary FROM runs").fetchall()
        sizes: dict[int, tuple[int, int]] = {}
        if conn.execute("SELECT to_regclass('frames') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
            for run_id, total, thumbs in conn.execute(
                "SELECT run_id, sum(pg_column_size(f.*)), "
                "coalesce(sum(octet_length(thumbnail)) FILTER (WHERE NOT keyframe), 0) FROM frames f GROUP BY run_id"
            ):
                sizes[int(run_id)] = (int(total), int(thumbs))
        for run_id, total in conn.execute("SELECT run_id, sum(pg_column_size(s.*)) FROM scene_changes s GROUP BY 1"):
            db_bytes, thumbs = sizes.get(int(run_id), (0, 0))
            sizes[int(run_id)] = (db_bytes + int(total), thumbs)
        return rows, sizes

    rows, sizes = db.run(read)
    out = []
    for row in rows:
        run = RunRow(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6] or {}, row[7])
        folder = folder_of(run, runs_dir)
        db_bytes, thumbs = sizes.get(run.id, (0, 0))
        out.append(StoredRun(run.id, run.name, run.ended_at, folder, folder_size(folder), db_bytes, thumbs))
    return out


def folder_size(folder: Path | None) -> int:
    if folder is None:
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def apply(db: Database, actions: list[Action]) -> list[str]:
    """Do what ``plan`` said; a line for each thing done (or left, and why)."""
    done = []
    open_ids = {r.id for r in db.run(open_runs)}
    for action in actions:
        run = action.run
        if run.id in open_ids:  # it was reopened since the survey: never touch a live run
            done.append(f"left run {run.name}: it is being recorded")
            continue
        if action.kind == "thumbnails":
            db.run(functools.partial(_strip_thumbnails, run_id=run.id))
            done.append(action.describe())
            continue
        lock = RunLock.take(run.folder) if run.folder is not None else None
        if run.folder is not None and lock is None:
            done.append(f"left run {run.name}: a live recorder holds its folder")
            continue
        try:
            db.run(functools.partial(_delete_rows, run_id=run.id))
            if run.folder is not None:
                shutil.rmtree(run.folder, ignore_errors=True)
        finally:
            if lock is not None:
                lock.release()
        done.append(action.describe())
    return done


def _strip_thumbnails(conn: psycopg.Connection, run_id: int) -> None:
    conn.execute(
        "UPDATE frames SET thumbnail = NULL WHERE run_id = %s AND NOT keyframe AND thumbnail IS NOT NULL", (run_id,)
    )


def _delete_rows(conn: psycopg.Connection, run_id: int) -> None:
    with conn.transaction():
        if conn.execute("SELECT to_regclass('frames') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
            conn.execute("DELETE FROM frames WHERE run_id = %s", (run_id,))
        conn.execute("DELETE FROM scene_changes WHERE run_id = %s", (run_id,))
        conn.execute("DELETE FROM events WHERE run_id = %s", (run_id,))
        conn.execute("DELETE FROM runs WHERE id = %s", (run_id,))


def prune(db: Database, runs_dir: str | Path, policy: Policy, now: datetime, *, dry_run: bool = False) -> list[str]:
    """Survey, plan and (unless ``dry_run``) apply: a line for each action."""
    actions = plan(survey(db, runs_dir), policy, now)
    if dry_run:
        return [f"would {a.describe()}" for a in actions]
    return apply(db, actions)


def low_disk(runs_dir: str | Path, usage_of=shutil.disk_usage) -> str | None:
    """A warning when the disk under the runs folder has less than 10% free, else None."""
    folder = Path(runs_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    usage = usage_of(folder)
    if usage.free < LOW_DISK * usage.total:
        return (
            f"the disk under {runs_dir} has {usage.free / GB:.1f} GB free of {usage.total / GB:.1f} GB "
            f"({100 * usage.free / usage.total:.0f}%): set ENCODERS_RETENTION_DAYS or ENCODERS_RETENTION_GB"
        )
    return None


class Pruner:
    """The recorder's thread: the policy applied every ``every`` seconds (the first time at once),
    and the warning about the disk; with its own connection, so that the run's writes never wait."""

    def __init__(self, url: str, runs_dir: str | Path, policy: Policy, every: float, clock=None) -> None:
        self.url, self.runs_dir, self.policy, self.every = url, runs_dir, policy, every
        self.clock = clock or (lambda: datetime.now(UTC))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="prune", daemon=True)

    def start(self) -> None:
        if self.policy.active:
            log.info("retention: %s, applied every %g s", describe(self.policy), self.every)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            self.once()
            if self.stop.wait(self.every):
                return

    def once(self) -> None:
        warning = low_disk(self.runs_dir)
        if warning:
            log.warning("%s", warning)
        if not self.policy.active:
            return
        db = Database(self.url)
        try:
            for line in prune(db, self.runs_dir, self.policy, self.clock()):
                log.info("retention: %s", line)
        except (DatabaseUnavailable, DatabaseRefused, OSError) as exc:
            log.warning("retention: not applied this time: %s", exc)
        finally:
            db.close()


def describe(policy: Policy) -> str:
    parts = [f"runs ended over {policy.days:g} days ago deleted"] if policy.days else []
    parts += [f"the runs kept under {policy.gb:g} GB"] if policy.gb else []
    return "; ".join(parts) or "keep everything"
