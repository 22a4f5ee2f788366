"""What the ingest may send the core: real time sends or gives up at once, lossless waits for credit;
what was not delivered is counted, and told to the core once."""

from __future__ import annotations

from encoders.services.ingest.delivery import Delivery
from encoders.services.ingest.http_source import JpegFrame


def frame(t: float) -> JpegFrame:
    return JpegFrame(b"\xff\xd8\xff\xd9", 4, 3, t)


def test_real_time_sends_every_frame_while_joined_and_gives_up_the_others():
    d = Delivery(lossless=False)
    d.add(frame(0))
    assert d.next() is None and d.pending is None  # not joined: given up at once
    assert (d.read, d.sent, d.undelivered) == (1, 0, 1)
    d.join(credit=5)
    assert d.credit == 0  # real time needs none
    d.add(frame(1))
    assert d.next() == frame(1)
    d.delivered()
    d.add(frame(2))
    assert d.next() == frame(2)
    d.not_delivered()  # the socket's queue was full
    assert d.pending is None and (d.read, d.sent, d.undelivered) == (3, 1, 2)
    assert d.accepting


def test_lossless_sends_only_against_credit_and_takes_nothing_while_a_frame_waits():
    d = Delivery(lossless=True)
    d.add(frame(0))
    assert d.next() is None and d.pending == frame(0) and not d.accepting  # not joined: it waits
    d.join(credit=1)
    assert d.next() == frame(0)
    d.delivered()
    assert d.credit == 0 and d.accepting
    d.add(frame(1))
    assert d.next() is None and not d.accepting  # no credit: the camera waits
    d.add_credit(2)
    assert d.next() == frame(1)
    d.not_delivered()  # no live connection: kept, sent later
    assert d.next() == frame(1) and d.undelivered == 0
    d.delivered()
    assert (d.sent, d.credit) == (2, 1)


def test_credit_belongs_to_one_life_of_the_session():
    d = Delivery(lossless=True)
    d.join(credit=4)
    d.lose()
    assert d.credit == 0
    d.add_credit(3)  # a Credit that was on its way: no life to spend it in
    assert d.credit == 0
    d.join(credit=2)  # a new life (a restarted core): its own credit, not 4 + 2
    assert d.credit == 2


def test_frames_given_up_are_told_in_hellos_until_one_is_welcomed_and_never_twice():
    d = Delivery(lossless=False)
    for t in range(3):
        d.add(frame(t))
        d.next()
    assert d.hello() == 3
    d.add(frame(3))
    d.next()
    assert d.hello() == 4  # the first Hello went unanswered: this one says it all
    d.add(frame(4))
    d.next()  # given up between the Hello and its Welcome
    d.join(credit=0)
    d.lose()
    assert d.hello() == 1  # only the one the welcomed Hello did not carry
    d.join(credit=0)
    d.lose()
    assert d.hello() == 0 and d.undelivered == 5


def test_the_end_gives_up_a_frame_still_waiting():
    d = Delivery(lossless=True)
    d.add(frame(0))
    d.give_up()
    assert d.pending is None and d.undelivered == 1 and d.hello() == 1


def test_a_hello_says_what_the_last_session_sent_and_to_which_life_of_the_core():
    d = Delivery(lossless=False)
    assert (d.session_sent, d.core) == (0, "")  # the first Hello: no session before it
    d.join(credit=0, core="L1")
    for t in range(3):
        d.add(frame(t))
        d.next()
        d.delivered()
    d.lose()
    assert (d.session_sent, d.core) == (3, "L1")  # what the next Hello says, whichever core answers
    d.join(credit=0, core="L2")
    assert (d.session_sent, d.core, d.sent) == (0, "L2", 3)
