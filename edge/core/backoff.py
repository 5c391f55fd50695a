"""Retry delays and the circuit: how long to wait after a failure, and when to say so.

Pure: no trio, no clock, no global random state. :class:`Backoff` turns "this is retry
number *n*" into seconds, drawing the jitter from a random source the caller hands in
(so a test passes ``random.Random(seed)``); :class:`Circuit` is a link's failures in a
row as a value, open after three of them. The supervisor, both relays, the MQTT ingest
and capture use them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

_MAX_DOUBLINGS = 30  # 2**30 times anything sensible is past any cap

CIRCUIT_OPEN_AFTER = 3  # failures in a row before health calls a link down


class RandomSource(Protocol):
    """What a backoff needs of :class:`random.Random`."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff, capped, with full jitter.

    The ceiling for retry ``n`` (``n >= 1``) is ``first * 2 ** (n - 1)``, at most
    ``most``; the delay is drawn uniformly from ``[least, ceiling]`` (never under
    ``least``). ``least`` defaults to ``first``.
    """

    first: float = 0.5
    most: float = 60.0
    least: float | None = None

    def ceiling(self, attempt: int) -> float:
        """The longest delay before retry number ``attempt`` (the first is 1)."""
        doublings = min(max(attempt, 1) - 1, _MAX_DOUBLINGS)
        return min(self.most, self.first * 2 ** doublings)

    def delay(self, attempt: int, rng: RandomSource | None) -> float:
        """Seconds before retry number ``attempt``: full jitter drawn from ``rng``, or,
        with ``rng`` None, the ceiling itself (a schedule a caller can announce)."""
        ceiling = self.ceiling(attempt)
        if rng is None:
            return ceiling
        least = self.first if self.least is None else self.least
        return rng.uniform(least, max(least, ceiling))


@dataclass(frozen=True)
class Circuit:
    """A link's failures in a row; ``open_after`` of them open the circuit (health
    calls the link down, and later retries are logged quietly)."""

    failures: int = 0
    open_after: int = CIRCUIT_OPEN_AFTER

    @property
    def open(self) -> bool:
        return self.failures >= self.open_after

    @property
    def just_opened(self) -> bool:
        """True right after the failure that opened it (say so once)."""
        return self.failures == self.open_after

    @property
    def loud(self) -> bool:
        """Whether the latest failure is worth a WARNING: those up to the one that
        opens the circuit; the retries after it are routine."""
        return self.failures <= self.open_after

    def failed(self) -> Circuit:
        """One failure more."""
        return replace(self, failures=self.failures + 1)

    def closed(self) -> Circuit:
        """The link works: the failures in a row end."""
        return replace(self, failures=0)
