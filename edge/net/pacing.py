"""How a session keeps pace: recognition against real time, and a client's messages
against its token's ``rate_limit``. Pure bookkeeping over times the caller passes in
(trio's clock), no I/O."""

from __future__ import annotations

import math
from collections import deque


class RecognitionLag:
    """How far recognition is behind real time, while audio waits to be decoded.

    The clock starts with the first chunk decoded after the recogniser caught up (found
    no audio waiting): from then on, audio arriving at real-time pace is decoded in time
    while the seconds elapsed stay under the seconds decoded. A client sending slower
    than real time lets the recogniser catch up, which restarts the clock; one sending
    faster only makes the lag negative. Unlike counting the audio queued inside the
    server (bounded: a full queue pushes back through TCP, and the rest waits in socket
    buffers and the client), this keeps growing for as long as recognition is slower
    than the audio.
    """

    def __init__(self, warn_over: float = math.inf, warn_every: float = 0.0) -> None:
        self._start: float | None = None
        self._decoded = 0.0
        self._warn_over = warn_over  # seconds of lag worth a warning
        self._warn_every = warn_every  # seconds between two warnings, at least
        self._warned = -math.inf

    def caught_up(self) -> None:
        self._start = None

    def decoded(self, seconds: float, received: float, now: float) -> float:
        """Record ``seconds`` of audio decoded (its chunk arrived at ``received``);
        returns the lag in seconds at ``now``."""
        if self._start is None:
            self._start, self._decoded = received, 0.0
        self._decoded += seconds
        return now - self._start - self._decoded

    def late(self, seconds: float, received: float, now: float) -> float | None:
        """:meth:`decoded`, and the lag if it is worth a warning now: over
        ``warn_over`` seconds, and ``warn_every`` seconds after the last warning."""
        lag = self.decoded(seconds, received, now)
        if lag <= self._warn_over or now - self._warned < self._warn_every:
            return None
        self._warned = now
        return lag


class MessageRate:
    """A token's ``rate_limit``: at most ``limit`` client messages in any 60 seconds
    (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._times: deque[float] = deque()

    def allows(self, now: float) -> bool:
        """Whether a message at ``now`` is within the limit (if so, it is counted)."""
        if self.limit is None:
            return True
        times = self._times
        while times and now - times[0] >= 60.0:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True
