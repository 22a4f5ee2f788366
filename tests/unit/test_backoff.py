"""The waits between attempts (shared/backoff.py): doubling to a longest, less a random part, with a seeded random."""

from __future__ import annotations

import random

import pytest

from encoders.shared.backoff import Backoff


def test_waits_double_up_to_the_longest_each_less_at_most_its_jitter():
    backoff = Backoff(0.5, 10.0, jitter=0.25, rng=random.Random(7))
    waits = [backoff.next() for _ in range(8)]
    doublings = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert all(0.75 * d <= w <= d for w, d in zip(waits, doublings, strict=True))
    assert backoff.failures == 8 and backoff.last == waits[-1]


def test_the_same_seed_gives_the_same_waits_and_another_seed_others():
    def waits(seed: int) -> list[float]:
        backoff = Backoff(1.0, 30.0, rng=random.Random(seed))
        return [backoff.next() for _ in range(6)]

    assert waits(1) == waits(1)
    assert waits(1) != waits(2)  # two services that failed together do not try again in step


def test_the_random_part_is_the_jitter_of_the_doubling():
    class Fixed(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def random(self) -> float:
            return self.value

    assert Backoff(2.0, 8.0, jitter=0.25, rng=Fixed(0.0)).next() == 2.0
    assert Backoff(2.0, 8.0, jitter=0.25, rng=Fixed(1.0)).next() == pytest.approx(1.5)
    assert Backoff(2.0, 8.0, jitter=0.0, rng=Fixed(0.9)).next() == 2.0


def test_a_reset_starts_over_from_the_first_wait():
    backoff = Backoff(0.5, 10.0, jitter=0.0, rng=random.Random(3))
    assert not backoff.failing and backoff.last == 0.0
    assert [backoff.next() for _ in range(3)] == [0.5, 1.0, 2.0]
    assert backoff.failing
    backoff.reset()
    assert not backoff.failing and backoff.failures == 0 and backoff.last == 0.0
    assert backoff.next() == 0.5


def test_a_longest_below_the_first_wait_caps_it_and_many_failures_never_overflow():
    backoff = Backoff(0.5, 0.1, jitter=0.0)
    assert backoff.next() == 0.1  # the recorder's writer with --db-retry-max 0.1
    many = Backoff(1.0, 30.0, jitter=0.0)
    for _ in range(5000):
        many.next()
    assert many.next() == 30.0
