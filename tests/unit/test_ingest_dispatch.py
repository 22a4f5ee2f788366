"""Credit bookkeeping and the pending-frame policy, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from encoders.services.ingest.dispatch import CreditLedger, Dispatcher, WorkerGone


class Workers:
    """The send function a Dispatcher calls, recording who got what; some workers are gone."""

    def __init__(self, gone=()) -> None:
        self.got: list[tuple[bytes, Any]] = []
        self.gone = set(gone)

    def __call__(self, worker, item) -> None:
        if worker in self.gone:
            raise WorkerGone("host unreachable")
        self.got.append((worker, item))


# -- CreditLedger ------------------------------------------------------------------------------


def test_ledger_hands_out_credit_round_robin():
    ledger: CreditLedger[bytes] = CreditLedger()
    assert ledger.take() is None
    assert ledger.add(b"a", 2) is True
    assert ledger.add(b"b", 1) is True
    assert ledger.add(b"a", 1) is False  # known already
    assert ledger.total == 4 and ledger.workers == [b"a", b"b"]
    assert [ledger.take() for _ in range(5)] == [b"a", b"b", b"a", b"a", None]
    assert ledger.total == 0 and ledger.workers == [b"a", b"b"]  # known, without credit


def test_ledger_alternates_between_workers_with_plenty_of_credit():
    ledger: CreditLedger[bytes] = CreditLedger()
    for w in (b"a", b"b", b"c"):
        ledger.add(w, 100)
    taken = [ledger.take() for _ in range(9)]
    assert taken == [b"a", b"b", b"c"] * 3


def test_ledger_skips_workers_without_credit():
    ledger: CreditLedger[bytes] = CreditLedger()
    ledger.add(b"a", 0)
    ledger.add(b"b", 2)
    ledger.add(b"c", 0)
    assert [ledger.take() for _ in range(3)] == [b"b", b"b", None]
    ledger.add(b"c", 1)
    assert ledger.take() == b"c"


def test_ledger_remove_forgets_the_worker_and_its_credit():
    ledger: CreditLedger[bytes] = CreditLedger()
    ledger.add(b"a", 3)
    ledger.add(b"b", 1)
    assert ledger.remove(b"a") == 3
    assert b"a" not in ledger and ledger.workers == [b"b"]
    assert [ledger.take(), ledger.take()] == [b"b", None]
    assert ledger.remove(b"nobody") == 0


def test_ledger_ignores_negative_credit():
    ledger: CreditLedger[bytes] = CreditLedger()
    ledger.add(b"a", -5)
    assert ledger.credit(b"a") == 0 and ledger.take() is None


# -- real-time mode -----------------------------------------------------------------------------


def test_realtime_sends_at_once_when_a_worker_has_credit():
    workers = Workers()
    d = Dispatcher(workers, lossless=False)
    d.credit(b"w", 2)
    assert d.offer(1) is None and d.offer(2) is None
    assert workers.got == [(b"w", 1), (b"w", 2)] and d.dispatched == 2
    assert d.pending is None and d.accepting


def test_realtime_keeps_only_the_newest_frame_waiting():
    workers = Workers()
    d = Dispatcher(workers, lossless=False)
    assert d.offer(1) is None  # waits
    assert d.pending == 1
    assert d.offer(2) == 1  # displaces 1, which the caller drops
    assert d.offer(3) == 2
    assert list(d.waiting) == [3] and d.accepting  # real time never stops the reader
    assert workers.got == []
    # Credit arrives: the waiting (newest) frame goes out at once.
    assert d.credit(b"w", 2) == 1
    assert workers.got == [(b"w", 3)] and d.pending is None
    assert d.offer(4) is None and workers.got[-1] == (b"w", 4)
    assert d.offer(5) is None and d.pending == 5  # credit spent again


def test_a_gone_worker_is_forgotten_and_the_next_one_gets_the_frame():
    workers = Workers(gone={b"dead"})
    d = Dispatcher(workers, lossless=False)
    d.credit(b"dead", 5)
    d.credit(b"live", 1)
    assert d.offer("f1") is None
    assert workers.got == [(b"live", "f1")]
    assert b"dead" not in d.ledger and d.workers_gone == 1
    # Only gone workers had credit: the frame waits instead.
    d.credit(b"dead2", 3)
    workers.gone.add(b"dead2")
    assert d.offer("f2") is None and d.pending == "f2" and d.ledger.workers == [b"live"]


def test_take_waiting_empties_the_queue_for_shutdown():
    d = Dispatcher(Workers(), lossless=False)
    d.offer(1)
    assert d.take_waiting() == [1]
    assert d.pending is None and d.take_waiting() == []


# -- lossless mode ------------------------------------------------------------------------------


def test_lossless_never_drops_and_pauses_the_reader():
    workers = Workers()
    d = Dispatcher(workers, lossless=True)
    assert d.accepting
    assert d.offer(1) is None
    assert not d.accepting  # the caller stops reading the camera
    assert d.offer(2) is None  # even if it offers more, nothing is dropped
    assert list(d.waiting) == [1, 2]
    assert d.credit(b"w", 1) == 1 and workers.got == [(b"w", 1)]
    assert not d.accepting
    assert d.credit(b"w", 5) == 1 and workers.got == [(b"w", 1), (b"w", 2)]
    assert d.accepting and d.dispatched == 2


@pytest.mark.parametrize("lossless", [False, True])
def test_every_frame_is_dispatched_dropped_or_waiting_exactly_once(lossless):
    workers = Workers()
    d = Dispatcher(workers, lossless=lossless)
    offered, dropped = [], []
    for i in range(200):
        if i % 7 == 0:
            d.credit(b"a" if i % 2 else b"b", 2)
        if not d.accepting:  # lossless: the reader waits until a worker asks for more
            continue
        offered.append(i)
        displaced = d.offer(i)
        if displaced is not None:
            dropped.append(displaced)
    sent = [item for _, item in workers.got]
    assert d.dispatched == len(sent) > 0
    assert sorted(sent + dropped + list(d.waiting)) == offered
    if lossless:
        assert not dropped and sent == sorted(sent)
    else:
        assert dropped and len(d.waiting) <= 1
