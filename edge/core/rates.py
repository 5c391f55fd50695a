"""The sample rates the daemon accepts: from a client's parameters or messages, a WAV
header, a peer's audio format or the config (pure)."""

from __future__ import annotations

from typing import TypeGuard

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000


def is_sample_rate(value: object) -> TypeGuard[int]:
    """An integer (not a bool) from :data:`MIN_SAMPLE_RATE` to :data:`MAX_SAMPLE_RATE` Hz."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and MIN_SAMPLE_RATE <= value <= MAX_SAMPLE_RATE)
