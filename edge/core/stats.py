"""Server-wide counters (pure): what ``/metrics`` and ``/healthz`` report."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

#: Latency buckets in seconds: a partial is useful within ~1 s, a final within ~2 s.
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass
class Histogram:
    """A cumulative histogram in the Prometheus sense (upper bounds, plus +Inf)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs, the last one ``+Inf``."""
        running, out = 0, []
        for bound, n in zip([*map(repr, self.bounds), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass
class Stats:
    sessions_total: int = 0
    sessions_by_dialect: Counter[str] = field(default_factory=Counter)
    sessions_current: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    finals: int = 0
    partials: int = 0
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0
    partial_latency: Histogram = field(default_factory=Histogram)
    final_latency: Histogram = field(default_factory=Histogram)

    def observe_decode(self, audio_seconds: float, decode_seconds: float) -> None:
        self.audio_seconds += audio_seconds
        self.decode_seconds += decode_seconds

    def count_session(self, dialect: str) -> None:
        self.sessions_total += 1
        self.sessions_by_dialect[dialect] += 1

    def count_warning(self, code: str) -> None:
        self.warnings[code] += 1

    @property
    def real_time_factor(self) -> float | None:
        """Seconds spent decoding per second of audio (lower is faster)."""
        if not self.audio_seconds:
            return None
        return self.decode_seconds / self.audio_seconds


class ResultFilter:
    """Which recognition results go out, counted in :class:`Stats` with their latency.

    Every final goes out; a partial only when partials are on and its text differs from
    the last partial's (Vosk repeats the same partial over silence and slow speech).
    ``latency``: seconds from the arrival of the audio to the result, when known.
    """

    def __init__(self, stats: Stats, partials: bool) -> None:
        self.stats = stats
        self.partials = partials
        self._last_partial = ""

    def admit(self, is_final: bool, text: str, latency: float | None) -> bool:
        if is_final:
            self._last_partial = ""
            self.stats.finals += 1
            if latency is not None:
                self.stats.final_latency.observe(latency)
            return True
        if not self.partials or text == self._last_partial:
            return False
        self._last_partial = text
        self.stats.partials += 1
        if latency is not None:
            self.stats.partial_latency.observe(latency)
        return True
