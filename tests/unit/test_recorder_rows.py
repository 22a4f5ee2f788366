"""Row building, and what database errors and stored settings show of a password: nothing."""

from datetime import UTC, datetime

import numpy as np
import pytest

from encoders.services.recorder.rows import build_row
from encoders.services.recorder.run import pipeline_settings
from encoders.shared.masking import mask
from encoders.shared.messages import MetricsRecord
from encoders.shared.storage.connection import Database
from encoders.shared.storage.errors import DatabaseRefused, describe_target, one_line
from encoders.shared.storage.frames import COLUMNS, COPY_TYPES, copy_values


def test_build_row_and_copy_values():
    vec = np.arange(4, dtype=np.float32)
    rec = MetricsRecord(
        stream="cam0",
        seq=42,
        t_capture=1700000000.5,
        t_encoded=1700000000.6,
        worker="host-1",
        model="ViT-B-32",
        similarity=0.5,
        drift=0.5,
        vector=vec,
    )
    row = build_row(9, rec, "snapshots/frame_000042.jpg")
    assert (row.run_id, row.stream, row.seq, row.worker, row.snapshot_path) == (
        9,
        "cam0",
        42,
        "host-1",
        "snapshots/frame_000042.jpg",
    )
    values = copy_values(row)
    assert len(values) == len(COLUMNS) == len(COPY_TYPES)
    assert values[COLUMNS.index("captured_at")] == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    assert values[COLUMNS.index("embedding")] is row.embedding
    first = build_row(
        9,
        MetricsRecord(
            stream="cam0",
            seq=0,
            t_capture=1.0,
            t_encoded=1.0,
            worker="w",
            model="m",
            similarity=None,
            drift=None,
            vector=vec,
        ),
    )
    assert first.similarity is None and first.drift is None and first.snapshot_path is None


def test_describe_target_never_shows_the_password():
    text = describe_target("postgresql://alice:s3cret@db.example:6543/frames")
    assert text == "host=db.example port=6543 database=frames user=alice"
    assert "s3cret" not in describe_target("host=10.0.0.5 dbname=x user=u password=s3cret")
    assert "s3cret" not in describe_target("postgresql://alice:s3cret@[bad")


def test_an_error_is_one_line_without_the_password():
    url = "postgresql://alice:s3cret@db.example/frames"
    error = RuntimeError('connection to server at "db.example" failed: password s3cret rejected\nDETAIL: more')
    assert one_line(error, url) == 'connection to server at "db.example" failed: password *** rejected'
    assert one_line(RuntimeError(""), url) == "RuntimeError"


def test_masked_urls_in_both_forms():
    assert mask("postgresql://alice:s3cret@db/x") == "postgresql://alice:***@db/x"
    assert mask("host=db password=s3cret dbname=x") == "host=db password=*** dbname=x"
    assert mask("host=db password = 'se cr\\'et' dbname=x") == "host=db password=*** dbname=x"


def test_a_known_password_is_masked_wherever_it_appears_and_a_token_whole():
    assert mask("psql postgresql://postgres:p@ss/w@h/d", password="p@ss/w") == "psql postgresql://postgres:***@h/d"
    assert mask("postgresql://postgres:new@h/d", password="") == "postgresql://postgres:new@h/d"  # shown on purpose
    assert (mask("s3cret-token", whole=True), mask("", whole=True)) == ("***", "")


def test_an_unparsable_url_is_refused_without_quoting_it():
    # libpq's own message quotes the whole URL; ours must not.
    with pytest.raises(DatabaseRefused) as info:
        Database.open("postgresql://alice:s3cret@[bad", wait_s=1)
    assert "unparsable database URL" in str(info.value)
    assert "s3cret" not in str(info.value) and info.value.__cause__ is None


def test_pipeline_settings_are_stored_with_secrets_mask():
    text = (
        '{"database_url": "postgresql://u:s3cret@db/x", "recorder": {"api_token": "abc", "fps": 15},'
        ' "streams": ["http://cam:pw@pi:8000/stream.mjpg"]}'
    )
    got = pipeline_settings(text)
    assert got == {
        "database_url": "postgresql://u:***@db/x",
        "recorder": {"api_token": "***", "fps": 15},
        "streams": ["http://cam:***@pi:8000/stream.mjpg"],
    }
    assert pipeline_settings("") == {}
    assert pipeline_settings("not json, postgresql://u:pw@h/d") == "not json, postgresql://u:***@h/d"
