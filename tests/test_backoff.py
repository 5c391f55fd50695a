"""Backoff and the circuit as tables: retry numbers in, delays out; failures in, circuit
states out. Pure and synchronous: no clock, no trio."""

from __future__ import annotations

import random

import pytest

from edge.core.backoff import Backoff, Circuit


class Bounds:
    """A random source that answers with the interval it was asked to draw from."""

    def __init__(self) -> None:
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return b


# How each user configures it (from its settings' defaults), retry number, and the
# interval the delay is drawn from.
JITTERED = [
    # the supervisor: base 0.5, cap 8
    (Backoff(0.5, 8.0), 1, (0.5, 0.5)),
    (Backoff(0.5, 8.0), 2, (0.5, 1.0)),
    (Backoff(0.5, 8.0), 3, (0.5, 2.0)),
    (Backoff(0.5, 8.0), 5, (0.5, 8.0)),
    (Backoff(0.5, 8.0), 9, (0.5, 8.0)),
    # the relays: the first retry already doubles (base 0.5, cap 60)
    (Backoff(first=1.0, most=60.0, least=0.5), 1, (0.5, 1.0)),
    (Backoff(first=1.0, most=60.0, least=0.5), 3, (0.5, 4.0)),
    (Backoff(first=1.0, most=60.0, least=0.5), 7, (0.5, 60.0)),
    # the MQTT ingest: from a quarter second, cap 30
    (Backoff(first=1.0, most=30.0, least=0.25), 1, (0.25, 1.0)),
    (Backoff(first=1.0, most=30.0, least=0.25), 2, (0.25, 2.0)),
    (Backoff(first=1.0, most=30.0, least=0.25), 6, (0.25, 30.0)),
    # a cap under the floor: never under the floor
    (Backoff(first=1.0, most=0.1, least=0.5), 4, (0.5, 0.5)),
    # a retry number out of range counts as the first
    (Backoff(0.5, 8.0), 0, (0.5, 0.5)),
    (Backoff(0.5, 8.0), 10_000, (0.5, 8.0)),
]


@pytest.mark.parametrize(("backoff", "attempt", "interval"), JITTERED)
def test_a_delay_is_drawn_between_the_floor_and_the_ceiling(
        backoff: Backoff, attempt: int, interval: tuple[float, float]) -> None:
    rng = Bounds()
    assert backoff.delay(attempt, rng) == interval[1]
    assert rng.asked == [interval]


# Capture announces its next retry (``retry_in``): no jitter, the ceilings themselves.
SCHEDULE = [
    (Backoff(0.5, 30.0), [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),
    (Backoff(0.05, 0.2), [0.05, 0.1, 0.2, 0.2]),
]


@pytest.mark.parametrize(("backoff", "delays"), SCHEDULE)
def test_without_a_random_source_the_delays_are_the_ceilings(
        backoff: Backoff, delays: list[float]) -> None:
    assert [backoff.delay(n, None) for n in range(1, len(delays) + 1)] == delays


def test_a_seeded_source_gives_the_same_delays() -> None:
    backoff = Backoff(0.5, 60.0)
    first = [backoff.delay(n, random.Random(3)) for n in range(1, 12)]
    assert first == [backoff.delay(n, random.Random(3)) for n in range(1, 12)]
    assert all(0.5 <= d <= 60.0 for d in first)


# Failures in a row -> (open, just opened, worth a warning).
CIRCUIT = [
    (0, (False, False, True)),
    (1, (False, False, True)),
    (2, (False, False, True)),
    (3, (True, True, True)),
    (4, (True, False, False)),
    (50, (True, False, False)),
]


@pytest.mark.parametrize(("failures", "expected"), CIRCUIT)
def test_three_failures_open_the_circuit(failures: int,
                                         expected: tuple[bool, bool, bool]) -> None:
    circuit = Circuit()
    for _ in range(failures):
        circuit = circuit.failed()
    assert circuit.failures == failures
    assert (circuit.open, circuit.just_opened, circuit.loud) == expected


def test_a_working_link_closes_the_circuit() -> None:
    circuit = Circuit().failed().failed().failed()
    assert circuit.open
    assert circuit.closed() == Circuit()
    assert not circuit.closed().open
