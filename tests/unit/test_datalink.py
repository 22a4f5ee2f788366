"""The data link's pure logic (docs/PROTOCOL.md, "Protocol 3"): the ingest's outbox and ring
(services/ingest/outbox.py), the core's worker numbers, addresses and admitted keys
(services/metrics/links.py) and which streams are watched (services/metrics/previews.py)."""

from __future__ import annotations

import pytest

from encoders.services.ingest.outbox import FLUSH_ROWS, FLUSH_S, Outbox
from encoders.services.ingest.pictures import JpegFrame
from encoders.services.metrics.links import DataLinks, data_address
from encoders.services.metrics.previews import Watchers
from encoders.shared.messages import NO_WORKER, Assigned, Assignment


def jpeg(t: float) -> JpegFrame:
    return JpegFrame(b"\xff\xd8%d" % int(t), 64, 48, t)


def test_captures_are_announced_every_2_ms_or_64_whichever_first_and_one_that_came_alone_at_once():
    box = Outbox()
    box.add(jpeg(1.0), now=10.0)
    assert box.due(10.0) and box.wait_s(10.0) == 0  # the first: nothing came before it to group it with
    notes = box.notes()
    assert notes is not None and notes.rows()[0].bytes == len(jpeg(1.0).jpeg) and box.notes() is None
    box.add(jpeg(2.0), now=10.0 + FLUSH_S / 2)  # frames coming faster than every 2 ms: grouped
    assert not box.due(10.0 + FLUSH_S / 2) and box.wait_s(10.0 + FLUSH_S / 2) == pytest.approx(FLUSH_S)
    box.add(jpeg(3.0), now=10.0 + FLUSH_S)
    assert not box.due(10.0 + FLUSH_S) and box.due(10.0 + 1.5 * FLUSH_S)  # 2 ms after the first waiting
    notes = box.notes()
    assert notes is not None and [r.bytes for r in notes.rows()] == [len(jpeg(2.0).jpeg), len(jpeg(3.0).jpeg)]
    box.add(jpeg(4.0), now=10.0 + 3 * FLUSH_S)  # 2 ms after the one before: a camera's rate, at once
    assert box.due(10.0 + 3 * FLUSH_S)
    box = Outbox(lossless=True)  # bounded by its credit, not ENCODERS_OUTBOX
    box.add(jpeg(0.0), now=20.0)
    box.notes()  # the first went at once; the next come at once after it: grouped
    for i in range(FLUSH_ROWS - 1):
        box.add(jpeg(float(i)), now=20.0)
    assert not box.due(20.0)
    box.add(jpeg(0.0), now=20.0)
    assert box.due(20.0)  # 64 waiting: at once


def test_assigned_pictures_go_by_worker_in_order_dropped_ones_forgotten_sent_ones_kept_in_the_ring():
    box = Outbox(ring_size=3)
    for t in range(5):
        box.add(jpeg(float(t)), now=0.0)
    notes = box.notes()
    assert notes is not None
    ids = notes.columns["id"].tolist()
    rows = [Assignment(ids[0], 10, 1), Assignment(ids[1], 11, NO_WORKER), Assignment(ids[2], 12, 2),
            Assignment(ids[3], 13, 1), Assignment(ids[4], 14, 1)]  # fmt: skip
    out = box.assign("cam", Assigned.of(rows))
    assert {w: [f.seq for f in frames] for w, frames in out.items()} == {1: [10, 13, 14], 2: [12]}
    assert out[2][0].jpeg == jpeg(2.0).jpeg and out[2][0].stream == "cam"
    assert len(box) == 0 and box.counts["dropped_by_core"] == 1
    assert list(box.ring) == [12, 13, 14]  # the last 3 sent; a dropped one is not kept
    found, gone = box.pictures([10, 13, 99])
    assert [f.seq for f in found] == [13]  # 10 left the ring: a snapshot missed
    assert gone == [10, 99]
    assert box.assign("cam", Assigned.of(rows[:1])) == {} and box.counts["unknown_ids"] == 1


def test_real_time_the_outbox_holds_at_most_its_limit_the_oldest_given_up():
    box = Outbox(limit=4)
    given_up = sum(box.add(jpeg(float(t)), now=0.0) for t in range(6))
    assert given_up == 2 and len(box) == 4 and box.counts["overflow"] == 2
    assert [f.t_arrival for f in box.waiting.values()] == [2.0, 3.0, 4.0, 5.0]
    lossless = Outbox(limit=4, lossless=True)  # bounded by its credit instead
    assert sum(lossless.add(jpeg(float(t)), now=0.0) for t in range(6)) == 0 and len(lossless) == 6


def test_a_lost_session_forgets_what_was_announced_and_gives_up_what_was_not():
    box = Outbox()
    box.add(jpeg(1.0), now=0.0)
    box.notes()
    box.add(jpeg(2.0), now=0.0)
    assert box.forget() == 1 and len(box) == 0 and box.counts["forgotten"] == 1


def test_worker_numbers_are_never_two_at_once_and_links_change_with_membership():
    links = DataLinks()
    a = links.add_worker(b"a", "tcp://10.0.0.5:5560", "k" * 40)
    b = links.add_worker(b"b", "ipc:///run/b", "")
    assert (a, b) == (1, 2) and links.links_changed
    assert links.links().links == {"1": {"address": "tcp://10.0.0.5:5560", "key": "k" * 40},
                                   "2": {"address": "ipc:///run/b", "key": ""}}  # fmt: skip
    links.links_changed = False
    links.remove_worker(b"a")
    assert links.links_changed and list(links.links().links) == ["2"] and links.number(b"a") == 0
    assert links.add_worker(b"a", "x", "") == 3  # a new life: a new number
    links.add_ingest(b"i", "j" * 40, "ingest cam0")
    links.add_ingest(b"plain", "", "no keys")
    assert links.admit_changed and links.admit().admit == {"j" * 40: "ingest cam0"}


K1, K2 = "1" * 40, "2" * 40  # two ingests' public keys (z85)


def test_with_keys_an_ingest_is_linked_to_a_worker_only_once_that_worker_admits_its_key():
    """The keys race (docs/PROTOCOL.md, "Keys on the data link"): an ingest is told a worker's link,
    and may be given that worker, only once the worker answered a generation holding its key."""
    links = DataLinks()
    links.add_worker(b"w", "tcp://10.0.0.5:5560", "w" * 40)
    assert links.admit().generation == 0 and links.may() is None  # no keyed ingest: nothing to wait for
    links.add_ingest(b"i1", K1, "ingest cam0", "cam0")
    told = links.admit()
    assert told.admit == {K1: "ingest cam0"} and told.generation == 1
    assert links.links(b"i1").links == {}  # not yet: its handshake would be refused
    may = links.may()
    assert may is not None and not may(b"w", "cam0")
    links.links_changed = False
    assert links.admits(b"w", 1) is True and links.links_changed  # its link is to be told now
    assert links.links(b"i1").links == {"1": {"address": "tcp://10.0.0.5:5560", "key": "w" * 40}}
    assert links.may() is None  # every pair linked: the broker checks nothing
    # A second ingest: the first stays linked; the second waits for the next generation.
    links.add_ingest(b"i2", K2, "ingest cam1", "cam1")
    assert links.admit().generation == 2
    may = links.may()
    assert may is not None and may(b"w", "cam0") and not may(b"w", "cam1")
    assert links.admits(b"w", 1) is False  # an old answer changes nothing
    assert links.admits(b"w", 3) is None  # a generation never sent: refused
    assert links.admits(b"nobody", 2) is None
    assert links.admits(b"w", 2) is True and links.may() is None
    # A new worker life admits nothing yet; a stream without an ingest may go anywhere (its picture never comes).
    links.add_worker(b"v", "tcp://10.0.0.6:5560", "v" * 40)
    may = links.may()
    assert may is not None and not may(b"v", "cam0") and may(b"v", "nobody")
    assert set(links.links(b"i1").links) == {"1"}
    # An ingest that leaves and comes back (the same key) waits again: its key left the list meanwhile.
    links.remove_ingest(b"i1")
    links.add_ingest(b"i1", K1, "ingest cam0", "cam0")
    assert links.admit().generation == 4 and links.links(b"i1").links == {}
    assert links.admits(b"w", 3) is False and links.links(b"i1").links == {}  # 3 did not hold it
    assert links.admits(b"w", 4) is True and set(links.links(b"i1").links) == {"1"}


def test_without_keys_every_ingest_is_linked_to_every_worker_at_once():
    links = DataLinks()
    links.add_worker(b"w", "ipc:///run/w", "")
    links.add_ingest(b"i", "", "ingest cam0", "cam0")
    assert not links.admit_changed and links.admit().generation == 0
    assert links.may() is None and set(links.links(b"i").links) == {"1"}


def test_a_workers_data_address_is_its_port_on_the_host_its_session_came_from_unless_advertised():
    assert data_address("tcp://0.0.0.0:5560", False, "10.0.0.7") == "tcp://10.0.0.7:5560"
    assert data_address("tcp://*:5560", False, "fe80::1") == "tcp://[fe80::1]:5560"
    assert data_address("tcp://127.0.0.1:41234", False, "127.0.0.1") == "tcp://127.0.0.1:41234"
    assert data_address("tcp://*:5560", False, "") == "tcp://127.0.0.1:5560"  # no TCP peer (inproc, ipc)
    assert data_address("tcp://10.1.1.1:5560", False, "192.168.0.3") == "tcp://10.1.1.1:5560"  # one interface
    assert data_address("tcp://gpu1.example:5560", True, "10.0.0.7") == "tcp://gpu1.example:5560"
    assert data_address("ipc:///run/w0", False, "") == "ipc:///run/w0"


def test_watchers_follow_the_xpub_subscriptions_and_tell_each_change_once():
    w = Watchers(10.0)
    assert w.wanted(["cam0", "cam1"]) == {}
    w.subscription(b"\x01frame/cam0")
    assert w.wanted(["cam0", "cam1"]) == {"cam0": 10.0}
    assert w.wanted(["cam0", "cam1"]) == {}  # told once
    w.subscription(b"\x01stats/")  # not frames: watches nothing
    w.subscription(b"\x01frame/")  # every stream
    assert w.wanted(["cam0", "cam1"]) == {"cam1": 10.0}
    w.subscription(b"\x00frame/")
    w.subscription(b"\x00frame/cam0")
    assert w.wanted(["cam0", "cam1"]) == {"cam0": 0.0, "cam1": 0.0}
