"""Search without a database: parsing filters, building SQL, choosing the plan, formatting results."""

import csv
import functools
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from encoders.services.search.output import render
from encoders.shared.storage import search_sql as sql
from encoders.shared.storage.filters import FilterError, Filters, FrameRef, parse_frame_ref, parse_time

NOW = datetime(2026, 1, 7, 12, 0, 0, tzinfo=UTC)


def test_parse_time_iso_relative_and_now():
    assert parse_time("2026-01-07T14:30:00+00:00", NOW) == datetime(2026, 1, 7, 14, 30, tzinfo=UTC)
    assert parse_time("2026-01-07T14:30:00Z", NOW) == datetime(2026, 1, 7, 14, 30, tzinfo=UTC)
    local = parse_time("2026-01-07 14:30", NOW)
    assert local.tzinfo is not None and local.replace(tzinfo=None) == datetime(2026, 1, 7, 14, 30)
    assert parse_time("2h", NOW) == NOW - timedelta(hours=2)
    assert parse_time("30m ago", NOW) == NOW - timedelta(minutes=30)
    assert parse_time("90s", NOW) == NOW - timedelta(seconds=90)
    assert parse_time("1.5d", NOW) == NOW - timedelta(hours=36)
    assert parse_time("1w", NOW) == NOW - timedelta(days=7)
    assert parse_time("now", NOW) == NOW
    with pytest.raises(FilterError, match="not a time"):
        parse_time("yesterday-ish", NOW)


def test_frame_refs():
    assert parse_frame_ref("3:42") == FrameRef("3", None, 42)
    assert parse_frame_ref("20260107_143022:cam1:7") == FrameRef("20260107_143022", "cam1", 7)
    for bad in ("3", "3:x", ":4", "a:b:c:4", "3::4"):
        with pytest.raises(FilterError):
            parse_frame_ref(bad)


def test_filters_reject_an_empty_time_range():
    with pytest.raises(FilterError, match="not after"):
        Filters(since=NOW, until=NOW)
    assert not Filters().any and Filters(stream="cam0").any


def test_where_has_a_parameter_for_every_value_and_moves_since_back_for_keyframes():
    f = Filters(run_ids=(3, 4), stream="cam0'; DROP TABLE frames; --", since=NOW, until=NOW + timedelta(hours=1))
    conds, params = sql.where(f, "f")
    assert conds == [
        "f.run_id = ANY(%(run_ids)s)",
        "f.stream = %(stream)s",
        "f.captured_at >= %(since)s",
        "f.captured_at < %(until)s",
    ]
    assert params == {
        "run_ids": [3, 4],
        "stream": "cam0'; DROP TABLE frames; --",
        "since": NOW,
        "until": NOW + timedelta(hours=1),
    }
    kconds, kparams = sql.where(f, keyframes=True, segment_span_s=5.0)
    assert "captured_at >= %(segments_since)s" in kconds
    assert kparams["segments_since"] == NOW - timedelta(seconds=5)
    assert sql.where(Filters()) == ([], {})


def test_nearest_sql_two_stages_and_exact_keyframes_hide_the_order_from_the_index():
    f = Filters(run_ids=(1,), since=NOW)
    text, params = sql.nearest_sql(f, sql.Plan(False, 12, 40), segment_span_s=5.0)
    assert "WHERE keyframe AND run_id = ANY(%(run_ids)s) AND captured_at >= %(segments_since)s" in text
    assert "ORDER BY embedding <=> %(q)s\n    LIMIT %(candidates)s" in text
    assert (
        "f.keyframe_seq = keys.seq" in text
        and "WHERE f.run_id = ANY(%(run_ids)s) AND f.captured_at >= %(since)s" in text
    )
    assert params == {"run_ids": [1], "segments_since": NOW - timedelta(seconds=5), "since": NOW, "candidates": 12}
    exact, _ = sql.nearest_sql(f, sql.Plan(True, 12, 40), segment_span_s=5.0)
    assert "ORDER BY (embedding <=> %(q)s) + 0" in exact
    unfiltered, uparams = sql.nearest_sql(Filters(), sql.Plan(False, 10, 40), segment_span_s=0)
    assert "WHERE keyframe\n" in unfiltered and "\nWHERE f." not in unfiltered and uparams == {"candidates": 10}


def test_choose_plan_by_hand():
    choose_plan = functools.partial(sql.choose_plan, k=10, candidates=10, ef_search=40, exact_limit=2000)
    assert choose_plan(filtered=False) == sql.Plan(False, 10, 40)
    assert choose_plan(filtered=False, k=50) == sql.Plan(False, 50, 50)  # ef >= candidates
    assert choose_plan(filtered=True, matching_keyframes=2000) == sql.Plan(True, 10, 40)
    # 2001 of 100,000 keyframes pass: selectivity 0.02001, ef = ceil(2 * 10 / 0.02001) = 1000 (the cap).
    assert choose_plan(filtered=True, matching_keyframes=2001, total_keyframes=100_000) == sql.Plan(False, 10, 1000)
    # 2001 of 8004: a quarter: ef = 80.
    assert choose_plan(filtered=True, matching_keyframes=2001, total_keyframes=8004) == sql.Plan(False, 10, 80)
    # The total unknown (no ANALYZE yet): assume all match, never below ef_search.
    assert choose_plan(filtered=True, matching_keyframes=2001) == sql.Plan(False, 10, 40)
    assert choose_plan(filtered=True, matching_keyframes=2001, total_keyframes=8004, iterative_scans=True) == sql.Plan(
        False, 10, 80, True
    )
    assert choose_plan(filtered=False, has_index=False).exact_keyframes


def test_plan_settings_and_description():
    assert sql.plan_settings(sql.Plan(False, 10, 80)) == ["SET LOCAL hnsw.ef_search = 80"]
    assert sql.plan_settings(sql.Plan(False, 10, 80, True))[1] == "SET LOCAL hnsw.iterative_scan = relaxed_order"
    assert sql.plan_settings(sql.Plan(True, 10, 80, True)) == ["SET LOCAL hnsw.ef_search = 80"]
    assert "HNSW" in sql.Plan(False, 10, 80).describe() and "exact" in sql.Plan(True, 10, 80).describe()


def test_count_events_and_runs_sql():
    text, params = sql.count_keyframes_sql(Filters(stream="cam1"), 5.0, 2001)
    assert text == (
        "SELECT count(*) FROM (SELECT 1 FROM frames WHERE keyframe AND stream = %(stream)s LIMIT %(cap)s) s"
    )
    assert params == {"stream": "cam1", "cap": 2001}
    text, params = sql.events_sql(Filters(until=NOW), 50)
    assert "WHERE e.captured_at < %(until)s" in text and params == {"until": NOW, "limit": 50}
    text, params = sql.runs_sql((2,), 10, frames_table=False)
    assert "WHERE r.id = ANY(%(run_ids)s)" in text and "0::bigint AS frames" in text
    assert params == {"run_ids": [2], "limit": 10}
    assert "FROM frames f WHERE f.run_id = r.id" in sql.runs_sql(None, 10)[0]


TIME = datetime(2026, 1, 7, 14, 30, 22, 500000, tzinfo=UTC)
ROWS = [
    {
        "rank": 1,
        "run": "20260107_143022",
        "seq": 42,
        "time": TIME,
        "similarity": 0.987654321,
        "drift": None,
        "picture": "runs/x/snapshots/frame_000030.jpg",
    },
    {"rank": 2, "run": "20260107_143022", "seq": 7, "time": None, "similarity": 0.5, "drift": 0.25, "picture": None},
]
COLS = ("rank", "run", "seq", "time", "similarity", "drift", "picture")


def test_table_is_aligned_numbers_right_text_left():
    lines = render(ROWS, COLS, "table").splitlines()
    assert lines[0].split() == list(COLS)
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 4
    assert " 42 " in lines[2] and "  7 " in lines[3]  # right-aligned under "seq"
    assert "0.9877" in lines[2] and "0.2500" in lines[3]
    assert lines[2].index("runs/x") == lines[0].index("picture")
    local = TIME.astimezone().isoformat(sep=" ", timespec="milliseconds")
    assert local in lines[2]


def test_json_and_csv_keep_full_precision():
    data = json.loads(render(ROWS, COLS, "json"))
    assert data[0]["similarity"] == 0.987654321 and data[0]["time"] == "2026-01-07T14:30:22.500000+00:00"
    assert data[1]["drift"] == 0.25 and data[1]["picture"] is None
    table = list(csv.reader(io.StringIO(render(ROWS, COLS, "csv"))))
    assert table[0] == list(COLS)
    assert table[1][4] == "0.987654321" and table[1][3] == "2026-01-07T14:30:22.500000+00:00" and table[2][6] == ""
    assert render([], COLS, "json") == "[]\n"
    with pytest.raises(ValueError):
        render(ROWS, COLS, "xml")
