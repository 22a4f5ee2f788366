"""The core's frame numbers: continued across restarts from a high-water mark on disk, raised by floors."""

from __future__ import annotations

import json
import time

import pytest

from encoders.services.metrics.numbering import Numbering
from encoders.shared.core_state import StateDir
from encoders.shared.runtime import StartupError


def test_numbers_go_on_per_stream_and_the_mark_is_written_once_per_block(tmp_path):
    path = tmp_path / "numbering.json"
    n = Numbering(path, block=100)
    assert [n.take("cam0") for _ in range(3)] == [0, 1, 2]
    assert n.take("cam1") == 0 and n.peek("cam0") == 3
    assert json.loads(path.read_text()) == {"streams": {"cam0": 100, "cam1": 100}}
    assert n.writes == 2  # one block each, not a write per frame
    for _ in range(97):
        n.take("cam0")
    assert n.writes == 2
    assert n.take("cam0") == 100 and n.writes == 3  # the next block, reserved before it is used
    assert json.loads(path.read_text())["streams"]["cam0"] == 200


def test_a_restarted_core_numbers_above_anything_handed_out(tmp_path):
    path = tmp_path / "numbering.json"
    first = Numbering(path, block=100)
    for _ in range(42):
        first.take("cam0")
    again = Numbering(path, block=100)  # the process died: the rest of the block is skipped, never reused
    assert again.take("cam0") == 100 and again.take("new") == 0
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_the_recorders_stored_seq_is_a_floor(tmp_path):
    n = Numbering(tmp_path / "numbering.json", block=100)
    n.take("cam0")
    assert n.raise_floor("cam0", 5000)
    assert n.take("cam0") == 5001
    assert n.take("cam0") == 5002
    assert not n.raise_floor("cam0", 10)  # below what is handed out already: nothing moves
    assert Numbering(tmp_path / "numbering.json").peek("cam0") >= 5003  # and the mark covers it


def test_a_damaged_mark_stops_the_start_with_one_line(tmp_path):
    path = tmp_path / "numbering.json"
    path.write_text('{"streams": {"cam0": "many"}}')
    with pytest.raises(StartupError, match=r"numbering\.json is damaged"):
        Numbering(path)


def test_a_failed_write_is_counted_and_numbering_goes_on(tmp_path, caplog):
    folder = tmp_path / "gone"
    folder.mkdir()
    n = Numbering(folder / "numbering.json", block=10)
    folder.rmdir()  # the state folder vanished under the core
    assert n.take("cam0") == 0 and n.write_errors == 1
    assert "cannot write the frame numbers' high-water mark" in caplog.text


def test_one_core_per_state_folder(tmp_path):
    held = StateDir(tmp_path / "state")
    with pytest.raises(StartupError, match="in use by another core"):
        StateDir(tmp_path / "state")
    held.close()
    StateDir(tmp_path / "state").close()
    (tmp_path / "file").write_text("")
    with pytest.raises(StartupError, match="cannot use the state folder"):
        StateDir(tmp_path / "file" / "state")


def test_reserving_a_block_costs_milliseconds(tmp_path):
    n = Numbering(tmp_path / "numbering.json", block=1)  # every take writes: the cost of one reservation
    started = time.perf_counter()
    for _ in range(20):
        n.take("cam0")
    per_write = (time.perf_counter() - started) / 20
    assert per_write < 0.05, f"{per_write * 1000:.1f} ms a write"
