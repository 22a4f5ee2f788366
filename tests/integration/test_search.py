"""Search, scene changes and runs against a real PostgreSQL + pgvector holding frames whose answers we know.

The frames are written the way the recorder writes them (Recorder + FrameWriter: keyframe
segments, thumbnails from real JPEGs, scene changes), with embeddings of solid-colour
pictures by the tiny CLIP model, so a query for a colour has a known answer; every answer
is also checked against an exact numpy search over the same vectors.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from PIL import Image

from encoders.services.encoder.thumbnails import make_thumbnail
from encoders.services.recorder.config import RecorderConfig
from encoders.services.recorder.recorder import Recorder
from encoders.services.recorder.run import RecordedRun
from encoders.services.recorder.writer import FrameWriter, writer_thread
from encoders.services.search.query import QueryEmbedder
from encoders.shared.messages import Frame, MetricsRecord
from encoders.shared.spool import Spool
from encoders.shared.storage import schema
from encoders.shared.storage.connection import Database
from encoders.shared.storage.embedded import database
from encoders.shared.storage.filters import Filters
from encoders.shared.storage.frames import FrameRow
from encoders.shared.storage.store import Store, StoreError

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 7, 14, 0, 0, tzinfo=UTC).timestamp()
FPS = 30.0
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
TEXT = "a red car"
OTHER_MODEL = "other-model/none"


def jpeg(colour, size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=90)
    return out.getvalue()


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


@dataclass
class Dataset:
    home: Path
    url: str
    label: str
    embedder: QueryEmbedder
    colour_vec: dict[str, np.ndarray]
    text_vec: np.ndarray
    run_ids: dict[str, int] = field(default_factory=dict)
    # (run, stream, seq) -> (vector, capture time, drift, colour, model)
    frames: dict[tuple[str, str, int], tuple] = field(default_factory=dict)

    def exact(self, q, k, *, runs=None, stream=None, since=None, until=None, model=None):
        """The numpy answer: [(run, stream, seq)] nearest first."""
        model = model or self.label
        keys = [
            key
            for key, (_, t, _, _, m) in self.frames.items()
            if m == model
            and (runs is None or key[0] in runs)
            and (stream is None or key[1] == stream)
            and (since is None or t >= since.timestamp())
            and (until is None or t < until.timestamp())
        ]
        sims = np.array([float(self.frames[key][0] @ q) for key in keys])
        order = np.argsort(-sims, kind="stable")[:k]
        return [keys[i] for i in order], sims[order]


def record_run(
    db: Database, data: Dataset, name: str, model: str, streams: dict, t0: float, snapshot_interval: float = 1.0
) -> int:
    """Write a run through the recorder's own classes. streams: name -> [(vector, colour, scene_change)]."""
    settings = RecorderConfig(
        stream_dirs=True, snapshot_interval=snapshot_interval, thumbnails="all", keyframe_drift=0.05, keyframe_max_s=5.0
    )
    run = RecordedRun.claim(
        db,
        runs_dir=data.home,
        run_dir=data.home / name,
        settings=settings.describe(),
        now=datetime.fromtimestamp(t0, UTC),
    )
    writer = FrameWriter(
        db, Spool(run.dir / "db_spool.msgpack"), run_id=run.id, batch_rows=64, executor=writer_thread()
    )
    rec = Recorder(run, writer, settings)
    for stream, frames in streams.items():
        prev = None
        for seq, (vec, colour, scene) in enumerate(frames):
            t = t0 + seq / FPS
            picture = jpeg(COLOURS[colour])
            sim: float | None = None if prev is None else float(vec @ prev)
            drift: float | None = None if sim is None else 1.0 - sim
            rec.on_message(
                MetricsRecord(
                    stream=stream,
                    seq=seq,
                    t_capture=t,
                    t_encoded=t,
                    worker="w",
                    model=model,
                    similarity=sim,
                    drift=drift,
                    vector=vec,
                    scene_change=scene,
                    rolling={"count": 10, "mean": 0.005, "std": 0.001},
                    thumbnail=make_thumbnail(picture, 160, 70),  # as the worker makes it
                )
            )
            for want in rec.wanted():  # its snapshot, asked for: the picture, as the core hands on the ingest's
                rec.on_message(Frame(want.stream, seq, t, 64, 48, picture))
            data.frames[(name, stream, seq)] = (vec, t, drift, colour, model)
            prev = vec
    rec.close_files()  # hands the last rows to the writer, as the recorder's own shutdown does
    assert writer.close(5.0)
    summary = run.finish({}, rec.stream_summaries(writer.written))
    db.update_run(run.id, ended_at=datetime.fromtimestamp(t0 + 10, UTC), summary=summary)
    data.run_ids[name] = run.id
    return run.id


@pytest.fixture(scope="module")
def data(tiny_model):
    home = Path(tempfile.mkdtemp(prefix="encoders-pg-"))
    resources = ExitStack()
    url = resources.enter_context(database("", str(home)))
    embedder = QueryEmbedder(tiny_model["ENCODERS_MODEL"], tiny_model["ENCODERS_PRETRAINED"], "cpu")
    queries = home / "queries"
    queries.mkdir()
    colour_vec = {}
    for name, rgb in COLOURS.items():
        (queries / f"{name}.jpg").write_bytes(jpeg(rgb))
        colour_vec[name] = embedder.image(queries / f"{name}.jpg")
    d = Dataset(home, url, embedder.label, embedder, colour_vec, embedder.text(TEXT))
    rng = np.random.default_rng(7)

    def near(colour):  # near-identical frames of one picture, as a still camera gives
        return unit(colour_vec[colour] + 0.01 * rng.standard_normal(colour_vec[colour].size))

    db = Database.open(url, wait_s=10)
    # run_a: 6 s of red, green, blue (scene changes at the cuts, between periodic snapshots every
    # 2.5 s: frames 0, 75, 150); frame 90 is the text's own embedding.
    a = (
        [(near("red"), "red", False) for _ in range(60)]
        + [(near("green"), "green", s == 0) for s in range(60)]
        + [(near("blue"), "blue", s == 0) for s in range(60)]
    )
    a[90] = (d.text_vec, "green", False)
    record_run(db, d, "run_a", d.label, {"cam0": a}, T0, snapshot_interval=2.5)
    # run_b, an hour later: red on cam0, yellow on cam1.
    record_run(
        db,
        d,
        "run_b",
        d.label,
        {
            "cam0": [(near("red"), "red", False) for _ in range(60)],
            "cam1": [(near("yellow"), "yellow", False) for _ in range(60)],
        },
        T0 + 3600,
    )
    # run_c: red again, but from another model: never compared with this model's queries.
    record_run(db, d, "run_c", OTHER_MODEL, {"cam0": [(near("red"), "red", False) for _ in range(30)]}, T0 + 7200)
    db.close()
    yield d
    resources.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def store(data):
    conn = psycopg.connect(data.url, autocommit=True)
    register_vector(conn)
    yield Store(conn, data.home)
    conn.close()


def keys(hits):
    return [(h.run, h.stream, h.seq) for h in hits]


def encoders(*args, env=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if k != "ENCODERS_DATABASE_URL"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "encoders", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=timeout,
    )


# --------------------------------------------------------------------------------------
# Search


def test_every_filter_returns_exactly_the_numpy_answer(data, store):
    since = datetime.fromtimestamp(T0 + 1800, UTC)
    cases: list[tuple[np.ndarray, dict[str, Any]]] = [
        (data.colour_vec["red"], {}),
        (data.colour_vec["red"], {"runs": ["run_b"]}),
        (data.colour_vec["yellow"], {"stream": "cam1"}),
        (data.colour_vec["blue"], {"since": since}),  # run_b only: no blue there
        (data.colour_vec["green"], {"runs": ["run_a"], "until": datetime.fromtimestamp(T0 + 3.5, UTC)}),
        (
            data.colour_vec["green"],
            {
                "runs": ["run_a"],
                "since": datetime.fromtimestamp(T0 + 2.5, UTC),
                "until": datetime.fromtimestamp(T0 + 3.0, UTC),
            },
        ),
    ]
    for q, f in cases:
        filters = Filters(
            run_ids=tuple(data.run_ids[r] for r in f["runs"]) if "runs" in f else None,
            stream=f.get("stream"),
            since=f.get("since"),
            until=f.get("until"),
        )
        filters, _ = store.restrict_to_model(data.label, filters)
        want, sims = data.exact(q, 10, **f)
        # The plan the store picks (exact keyframes for these small filters), and the index forced.
        for exact_limit in (2000, 0):
            result = store.nearest(q, 10, filters, exact_limit=exact_limit)
            assert keys(result.hits) == want, (f, exact_limit, result.plan)
            np.testing.assert_allclose([h.similarity for h in result.hits], sims, atol=1e-5)
        if f:
            assert store.nearest(q, 10, filters).plan.exact_keyframes
            assert not store.nearest(q, 10, filters, exact_limit=0).plan.exact_keyframes
    # The cuts between colours: search within 2.5-3.0 s of run_a holds only green frames 75..89.
    assert {
        s
        for (_, _, s) in data.exact(
            data.colour_vec["green"],
            100,
            runs=["run_a"],
            since=datetime.fromtimestamp(T0 + 2.5, UTC),
            until=datetime.fromtimestamp(T0 + 3.0, UTC),
        )[0]
    } == set(range(75, 90))


def test_hits_carry_time_snapshot_and_thumbnail(data, store, tmp_path):
    result = store.nearest(data.colour_vec["blue"], 3, Filters(run_ids=(data.run_ids["run_a"],)))
    top = result.hits[0]
    assert (top.run, top.stream) == ("run_a", "cam0") and 120 <= top.seq < 180
    assert top.captured_at.timestamp() == pytest.approx(T0 + top.seq / FPS, abs=1e-6)
    # Its picture: the latest snapshot before it, periodic (0, 75, 150) or of a scene change (60, 120).
    assert top.snapshot_seq == max(s for s in (120, 150) if s <= top.seq)
    assert top.snapshot.endswith("scene_000120.jpg" if top.seq < 150 else "frame_000150.jpg")
    assert Path(top.snapshot).is_file() and Path(top.snapshot).read_bytes() == jpeg(COLOURS["blue"])
    assert store.export_thumbnails(result.hits, tmp_path / "thumbs") == 3
    thumb = Image.open(result.hits[0].thumbnail)
    assert thumb.format == "JPEG" and max(thumb.size) <= 160
    pixel = thumb.getpixel((10, 10))
    assert isinstance(pixel, tuple)  # an RGB picture's pixel
    assert all(abs(a - b) < 16 for a, b in zip(pixel, COLOURS["blue"], strict=False))


def test_another_models_runs_are_left_out_or_refused(data, store):
    filters, notes = store.restrict_to_model(data.label, Filters())
    assert filters.run_ids == (data.run_ids["run_a"], data.run_ids["run_b"])
    assert notes == [f"1 run(s) embedded with {OTHER_MODEL} are not searched: the query is embedded with {data.label}"]
    with pytest.raises(
        StoreError, match=f"run run_c was embedded with {OTHER_MODEL}, but the query is embedded with {data.label}"
    ):
        store.restrict_to_model(data.label, Filters(run_ids=(data.run_ids["run_c"],)))
    with pytest.raises(StoreError, match="no run in this database was embedded with ViT-B-32/openai"):
        store.restrict_to_model("ViT-B-32/openai", Filters())


def test_cli_search_by_text_finds_the_frame_that_is_its_embedding(data, tiny_model):
    out = encoders(
        "search",
        "--text",
        TEXT,
        "--database-url",
        data.url,
        "--runs-dir",
        str(data.home),
        "-k",
        "3",
        "--format",
        "json",
        env=tiny_model,
    )
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert (hits[0]["run"], hits[0]["stream"], hits[0]["seq"]) == ("run_a", "cam0", 90)
    assert hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5) and hits[0]["rank"] == 1
    want, _ = data.exact(data.text_vec, 3)
    assert [(h["run"], h["stream"], h["seq"]) for h in hits] == want
    assert datetime.fromisoformat(hits[0]["time"]).timestamp() == pytest.approx(T0 + 3.0)
    # A sentence searches the index more widely than a picture does (SearchConfig.search_ef_text).
    args = ("--database-url", data.url, "--runs-dir", str(data.home), "-k", "3", "--search-exact-keyframes", "0")
    table = encoders("search", "--text", TEXT, *args, env=tiny_model)
    assert table.returncode == 0 and "ef_search 800" in table.stderr, table.stderr
    frame = encoders("search", "--frame", "run_a:cam0:90", *args, "--search-ef", "300", env=tiny_model)
    assert frame.returncode == 0 and "ef_search 300" in frame.stderr, frame.stderr
    assert "not searched" in out.stderr  # run_c, another model


def test_cli_search_by_image_with_filters_as_csv_and_thumbnails(data, tiny_model, tmp_path):
    out = encoders(
        "search",
        "--image",
        str(data.home / "queries" / "red.jpg"),
        "--run",
        "run_b",
        "--stream",
        "cam0",
        "--database-url",
        data.url,
        "--runs-dir",
        str(data.home),
        "-k",
        "5",
        "--format",
        "csv",
        "--thumbnails",
        str(tmp_path / "t"),
        env=tiny_model,
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    want, sims = data.exact(data.colour_vec["red"], 5, runs=["run_b"], stream="cam0")
    assert [(r["run"], r["stream"], int(r["seq"])) for r in rows] == want
    np.testing.assert_allclose([float(r["similarity"]) for r in rows], sims, atol=1e-5)
    assert all(Path(r["thumbnail"]).is_file() and Path(r["thumbnail"]).parent == tmp_path / "t" for r in rows)
    assert all(r["snapshot"].endswith(".jpg") and Path(r["snapshot"]).is_file() for r in rows)


def test_cli_search_by_frame_as_a_table_reads_the_embedded_database(data):
    # No --database-url and no ENCODERS_DATABASE_URL: the embedded server under --runs-dir, as the
    # all-in-one command leaves it. No model is loaded for --frame.
    out = encoders(
        "search",
        "--frame",
        "run_a:cam0:130",
        "--runs-dir",
        str(data.home),
        "-k",
        "4",
        "--since",
        datetime.fromtimestamp(T0, UTC).isoformat(),
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["rank", "run", "stream", "seq", "time", "similarity", "drift", "picture"]
    want, _ = data.exact(data.frames[("run_a", "cam0", 130)][0], 4, since=datetime.fromtimestamp(T0, UTC))
    assert [(ln.split()[1], ln.split()[2], int(ln.split()[3])) for ln in lines[2:]] == want
    assert want[0] == ("run_a", "cam0", 130)
    assert "4 frames nearest to frame run_a:cam0:130" in out.stderr


def test_cli_search_says_clearly_what_is_wrong(data, tiny_model):
    args = ("--database-url", data.url, "--runs-dir", str(data.home))
    wrong_model = encoders("search", "--text", TEXT, "--run", "run_c", *args, env=tiny_model)
    assert wrong_model.returncode == 2
    assert (
        f"run run_c was embedded with {OTHER_MODEL}, but the query is embedded with {data.label}" in wrong_model.stderr
    )
    for extra, message in [
        (("--frame", "run_a:999"), "run run_a has no embedded frame 999"),
        (("--frame", "run_b:3"), "give --frame run_b:STREAM:3"),
        (("--frame", "nope:3"), "no run 'nope'"),
        (("--frame", "run_a:3", "--since", "soon"), "not a time"),
        (("--text", "x", "--frame", "run_a:3"), "exactly one of"),
    ]:
        out = encoders("search", *extra, *args, env=tiny_model)
        assert out.returncode == 2 and message in out.stderr, (extra, out.stderr)
    empty = Path(tempfile.mkdtemp(prefix="encoders-pg-"))
    try:
        out = encoders("search", "--frame", "1:1", "--runs-dir", str(empty))
        assert out.returncode == 2 and "nothing was recorded with --runs-dir" in out.stderr
        assert not (empty / ".pgdata").exists()  # a reader never creates a database
    finally:
        shutil.rmtree(empty, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Scene changes and runs


def test_cli_events_and_runs(data):
    out = encoders("events", "--runs-dir", str(data.home), "--format", "json")
    assert out.returncode == 0, out.stderr
    events = json.loads(out.stdout)
    assert [(e["run"], e["stream"], e["seq"]) for e in events] == [("run_a", "cam0", 60), ("run_a", "cam0", 120)]
    assert events[0]["drift"] == pytest.approx(data.frames[("run_a", "cam0", 60)][2], abs=1e-6)
    assert events[0]["window_mean"] == pytest.approx(0.005)
    assert Path(events[1]["snapshot"]).read_bytes() == jpeg(COLOURS["blue"])  # the scene change's own snapshot
    assert events[1]["snapshot"].endswith("cam0/snapshots/scene_000120.jpg")
    ranged = encoders(
        "events",
        "--runs-dir",
        str(data.home),
        "--since",
        datetime.fromtimestamp(T0 + 3, UTC).isoformat(),
        "--format",
        "csv",
    )
    assert [r["seq"] for r in csv.DictReader(io.StringIO(ranged.stdout))] == ["120"]

    out = encoders("runs", "--runs-dir", str(data.home), "--format", "json")
    assert out.returncode == 0, out.stderr
    runs = {r["name"]: r for r in json.loads(out.stdout)}
    assert list(runs) == ["run_a", "run_b", "run_c"]
    assert (runs["run_a"]["frames"], runs["run_a"]["scene_changes"], runs["run_a"]["model"]) == (180, 2, data.label)
    assert runs["run_b"]["frames"] == 120 and runs["run_b"]["streams"] == ["cam0", "cam1"]
    assert runs["run_c"]["model"] == OTHER_MODEL
    drifts = [v[2] for k, v in data.frames.items() if k[0] == "run_b" and v[2] is not None]
    assert runs["run_b"]["drift_mean"] == pytest.approx(np.mean(drifts), rel=1e-4)
    table = encoders("runs", "--runs-dir", str(data.home))
    assert table.stdout.splitlines()[0].split() == [
        "id",
        "name",
        "started",
        "ended",
        "model",
        "streams",
        "frames",
        "scene_changes",
        "drift_mean",
    ]
    assert len(table.stdout.splitlines()) == 5


# --------------------------------------------------------------------------------------
# sql/examples.sql, run by psql


def psql(url: str, query: str, **variables) -> list[dict]:
    from pgserver._commands import POSTGRES_BIN_PATH

    args = [str(POSTGRES_BIN_PATH / "psql"), url, "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1"]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    out = subprocess.run(args, input=query, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return list(csv.DictReader(io.StringIO(out.stdout)))


def examples() -> dict[str, str]:
    text = (REPO / "sql" / "examples.sql").read_text()
    blocks = text.split("-- name: ")[1:]
    return {b.split("\n", 1)[0].strip(): b.split("\n", 1)[1] for b in blocks}


def test_every_query_in_examples_sql_runs_and_answers(data):
    queries = examples()
    assert set(queries) == {
        "nearest_to_frame",
        "nearest_to_vector",
        "nearest_to_vector_in_run",
        "drift_above",
        "scene_changes_in_range",
        "runs",
    }
    run_a, run_b = data.run_ids["run_a"], data.run_ids["run_b"]

    rows = psql(data.url, queries["nearest_to_frame"], run=run_a, stream="cam0", seq=130, k=5)
    # The query is not model-aware: compare with every run's frames (run_c included).
    want, sims = data.exact(data.frames[("run_a", "cam0", 130)][0], 5, model=data.label)
    assert [(r["run"], r["stream"], int(r["seq"])) for r in rows] == want
    np.testing.assert_allclose([float(r["similarity"]) for r in rows], sims, atol=1e-5)

    vec = "[" + ",".join(repr(float(x)) for x in data.text_vec) + "]"
    rows = psql(data.url, queries["nearest_to_vector"], vec=vec, k=3)
    assert (rows[0]["run"], rows[0]["seq"]) == ("run_a", "90") and float(rows[0]["similarity"]) == pytest.approx(
        1, abs=1e-5
    )

    red = "[" + ",".join(repr(float(x)) for x in data.colour_vec["red"]) + "]"
    rows = psql(data.url, queries["nearest_to_vector_in_run"], vec=red, run=run_b, k=4)
    assert [(r["stream"], int(r["seq"])) for r in rows] == [
        k[1:] for k in data.exact(data.colour_vec["red"], 4, runs=["run_b"])[0]
    ]

    rows = psql(data.url, queries["drift_above"], run=run_a, drift=0.2)
    want = sorted(s for (r, _, s), v in data.frames.items() if r == "run_a" and v[2] is not None and v[2] > 0.2)
    assert [int(r["seq"]) for r in rows] == want and {60, 90, 91, 120} <= set(want)

    since = datetime.fromtimestamp(T0 + 1, UTC).isoformat()
    until = datetime.fromtimestamp(T0 + 4.5, UTC).isoformat()
    rows = psql(data.url, queries["scene_changes_in_range"], since=since, until=until)
    assert [(r["run"], int(r["seq"])) for r in rows] == [("run_a", 60), ("run_a", 120)]
    assert rows[1]["snapshot_path"] == "cam0/snapshots/scene_000120.jpg"
    assert (
        psql(
            data.url,
            queries["scene_changes_in_range"],
            since=until,
            until=datetime.fromtimestamp(T0 + 99, UTC).isoformat(),
        )
        == []
    )

    rows = psql(data.url, queries["runs"])
    assert [(r["name"], int(r["frames"]), int(r["scene_changes"])) for r in rows] == [
        ("run_a", 180, 2),
        ("run_b", 120, 0),
        ("run_c", 30, 0),
    ]


# --------------------------------------------------------------------------------------
# Which indexes serve the queries, on a table big enough for the planner to care


@pytest.fixture(scope="module")
def big(data):
    """A database of its own: 2 runs x 2 streams x 6,000 frames of 64 dims, in segments of 100."""
    name = "t_" + uuid.uuid4().hex[:10]
    with psycopg.connect(data.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = data.url.replace("/postgres?", f"/{name}?")
    db = Database.open(url, wait_s=10)
    rng = np.random.default_rng(3)
    vectors = {}
    for r in (1, 2):
        run_id = db.claim_run(f"big{r}", datetime.fromtimestamp(T0 + r * 86400, UTC))
        assert run_id is not None
        db.update_run(run_id, model="m", config={"recorder": {"keyframe_max_s": 5.0}})
        db.ensure_frames(64)
        rows = []
        for stream in ("cam0", "cam1"):
            for seg in range(60):
                centre = rng.standard_normal(64)
                for i in range(100):
                    seq = seg * 100 + i
                    v = unit(centre + 0.05 * rng.standard_normal(64))
                    vectors[(run_id, stream, seq)] = v
                    rows.append(
                        FrameRow(
                            run_id, stream, seq, T0 + r * 86400 + seq / FPS, None, None, v, None, "w", i == 0, seg * 100
                        )
                    )
        for i in range(0, len(rows), 2000):
            db.write_rows(rows[i : i + 2000])
    db.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE frames")
    yield url, vectors


def test_explain_shows_the_hnsw_index_unfiltered_and_the_filtered_approach(big):
    url, vectors = big
    conn = psycopg.connect(url, autocommit=True)
    register_vector(conn)
    try:
        store = Store(conn)
        q = next(iter(vectors.values()))
        plan = store.plan(Filters(), k=10, candidates=10, ef_search=40, exact_limit=2000)
        text = store.explain(q, 10, Filters(), plan)
        assert "Index Scan using frames_keyframe_hnsw" in text, text
        assert "frames_segment" in text, text  # the second stage reads segments by their index
        # One run: 120 keyframes, ranked exactly through the B-tree on keyframes, no HNSW.
        one_run = Filters(run_ids=(1,))
        plan = store.plan(one_run, k=10, candidates=10, ef_search=40, exact_limit=2000)
        assert plan.exact_keyframes
        text = store.explain(q, 10, one_run, plan)
        assert "frames_keyframe_run" in text and "hnsw" not in text, text
        # More keyframes than the exact limit: the index with the filter, ef_search raised by selectivity.
        plan = store.plan(one_run, k=10, candidates=10, ef_search=40, exact_limit=50)
        assert not plan.exact_keyframes and plan.ef_search == math.ceil(2 * 10 * 240 / 51)  # 51 counted of 240
        text = store.explain(q, 10, one_run, plan)
        assert "Index Scan using frames_keyframe_hnsw" in text and "Filter: (run_id = ANY" in text, text
        # Both find the exact answer here.
        for limit in (2000, 50):
            hits = store.nearest(q, 10, one_run, exact_limit=limit).hits
            exact = sorted(((float(v @ q), k) for k, v in vectors.items() if k[0] == 1), reverse=True)[:10]
            assert [(h.run_id, h.stream, h.seq) for h in hits] == [k for _, k in exact]
        # sql/examples.sql's nearest_to_frame: the index serves a query vector taken from a row too.
        text = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN "
                + examples()["nearest_to_frame"]
                .replace(":'stream'", "'cam0'")
                .replace(":run", "1")
                .replace(":seq", "5")
                .replace(":k", "10")
            ).fetchall()
        )
        assert "Index Scan using frames_keyframe_hnsw" in text, text
    finally:
        conn.close()


# --------------------------------------------------------------------------------------
# Migrations


def test_db_migrate_twice_and_an_old_database_is_brought_up_to_date(tmp_path):
    home = Path(tempfile.mkdtemp(prefix="encoders-pg-"))
    try:
        first = encoders("db", "migrate", "--runs-dir", str(home))
        assert first.returncode == 0, first.stderr
        assert all(f"applied migration {v}:" in first.stdout for v in (1, 2, 3, 4, 5)), first.stdout
        second = encoders("db", "migrate", "--runs-dir", str(home))
        assert second.returncode == 0 and second.stdout.strip() == "the schema is up to date (version 5)"

        # A database as the first recorder left it: schema version 1, frames with a full HNSW index.
        resources = ExitStack()
        url = resources.enter_context(database("", str(home)))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE old")
        old = url.replace("/postgres?", "/old?")
        with psycopg.connect(old, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION vector")
            conn.execute(
                "CREATE TABLE schema_version (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute(
                "CREATE TABLE runs (id bigserial PRIMARY KEY, name text UNIQUE NOT NULL, started_at "
                "timestamptz, ended_at timestamptz, model text, dim int, config jsonb, summary jsonb)"
            )
            conn.execute("INSERT INTO schema_version VALUES (1)")
            # summary.json as a one-camera run wrote it then: the stream's figures at the top.
            old_summary = {
                "stream": "cam0",
                "frames": {"embedded": 2},
                "records": 2,
                "snapshots": 0,
                "npz_batches": 1,
                "db_rows": 2,
                "drift": {"count": 1, "mean": 0.5},
                "run": {"name": "old"},
                "other_streams": {},
            }
            conn.execute(
                "INSERT INTO runs (name, model, dim, summary) VALUES ('old', 'm', 3, %s)", (json.dumps(old_summary),)
            )
            conn.execute(
                "CREATE TABLE frames (run_id bigint NOT NULL REFERENCES runs (id), stream text NOT NULL, "
                "seq bigint NOT NULL, captured_at timestamptz, similarity real, drift real, "
                "embedding vector(3) NOT NULL, snapshot_path text, worker text, "
                "PRIMARY KEY (run_id, stream, seq))"
            )
            conn.execute("CREATE INDEX frames_embedding_hnsw ON frames USING hnsw (embedding vector_cosine_ops)")
            conn.execute(
                "INSERT INTO frames (run_id, stream, seq, captured_at, embedding) VALUES "
                "(1, 'cam0', 0, now(), '[1,0,0]'), (1, 'cam0', 1, now(), '[0,1,0]')"
            )
        stale = encoders("runs", "--database-url", old)
        assert stale.returncode == 2 and "schema is at version 1" in stale.stderr
        assert "encoders db migrate" in stale.stderr
        for attempt in range(2):
            out = encoders("db", "migrate", "--database-url", old)
            assert out.returncode == 0, out.stderr
            assert ("applied migration 2:" in out.stdout) == (attempt == 0), out.stdout
            assert ("applied migration 3:" in out.stdout) == (attempt == 0), out.stdout
            assert ("applied migration 4:" in out.stdout) == (attempt == 0), out.stdout
        with psycopg.connect(old, autocommit=True) as conn:
            register_vector(conn)
            assert conn.execute("SELECT seq, keyframe, keyframe_seq FROM frames ORDER BY seq").fetchall() == [
                (0, True, 0),
                (1, True, 1),
            ]
            indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'frames'")}
            assert "frames_keyframe_hnsw" in indexes and "frames_embedding_hnsw" not in indexes
            assert [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY 1")] == [1, 2, 3, 4, 5]
            # Keyframes inserted from now on are linked as a new database's are.
            index = conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'frames_keyframe_hnsw'").fetchone()
            assert index is not None
            (options,) = index
            assert f"ef_construction={schema.HNSW_EF_CONSTRUCTION}" in options
            # ... is now in the one shape, as a run recorded today would have it.
            row = conn.execute("SELECT summary FROM runs WHERE name = 'old'").fetchone()
            assert row is not None
            (summary,) = row
            assert summary["run"] == {"name": "old"} and set(summary) == {"run", "streams", "totals"}
            assert summary["streams"]["cam0"]["frames"] == {"embedded": 2}
            assert summary["streams"]["cam0"]["folder"] == "." and "other_streams" not in summary["streams"]["cam0"]
            assert summary["totals"]["records"] == 2 and summary["totals"]["db_rows"] == 2
            store = Store(conn)
            store.check_schema()
            assert store.runs(10)[0]["streams"] == ["cam0"] and store.runs(10)[0]["drift_mean"] == 0.5
            hits = store.nearest(np.array([0.1, 1.0, 0.0], np.float32), 1, Filters()).hits
            assert [(h.run, h.seq) for h in hits] == [("old", 1)]
        resources.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
