"""Server-wide counters (pure): what ``/metrics`` and ``/healthz`` report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    sessions_total: int = 0
    sessions_current: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    finals: int = 0
    partials: int = 0
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0

    def observe_decode(self, audio_seconds: float, cpu_seconds: float) -> None:
        self.audio_seconds += audio_seconds
        self.decode_seconds += cpu_seconds

    def count_warning(self, code: str) -> None:
        self.warnings[code] += 1

    @property
    def real_time_factor(self) -> float | None:
        """Wall time spent decoding per second of audio (lower is faster)."""
        if not self.audio_seconds:
            return None
        return self.decode_seconds / self.audio_seconds
