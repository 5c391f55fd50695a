"""One-for-one supervision of the daemon's background services.

A background service (the relay, the room, the revocation watcher, retention, ...) is
an ``async def run(*, task_status)`` that runs until cancelled. Under
:meth:`Supervisor.start` an unexpected exception from it is logged once at ERROR with
its traceback, counted (``edge_service_restarts_total{service}``), and the service is
run again after an exponential backoff with full jitter, capped: a crash loop is
visible and bounded, and never takes the listener or a client session with it.
Cancellation and KeyboardInterrupt are never caught: they stop the service.

A service that returns stops for good (``stopped``): that is how a service ends on
purpose, e.g. the room after a graceful stop.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from edge.core.backoff import Backoff

logger = logging.getLogger(__name__)

Service = Callable[..., Awaitable[Any]]  # run(*, task_status=...)

_STABLE_AFTER = 60.0  # a run this long resets the backoff


@dataclass
class ServiceState:
    """What ``/healthz`` shows of one service."""

    name: str
    state: str = "starting"  # starting, running, restarting, stopped
    restarts: int = 0
    last_error: str | None = None
    next_attempt: float | None = None  # wall-clock time of the next run, when restarting

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "restarts": self.restarts}
        if self.last_error is not None:
            out["last_error"] = self.last_error
        if self.state == "restarting" and self.next_attempt is not None:
            out["next_attempt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                time.gmtime(self.next_attempt))
        return out


class Supervisor:
    """Runs services in the caller's nursery, restarting those that fail."""

    def __init__(self, *, backoff_base: float = 0.5, backoff_max: float = 60.0,
                 rng: random.Random | None = None) -> None:
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._backoff = Backoff(backoff_base, backoff_max)
        self._rng = rng or random.Random()
        self.services: dict[str, ServiceState] = {}
        self._scopes: dict[str, trio.CancelScope] = {}

    async def start(self, nursery: trio.Nursery, name: str, run: Service) -> None:
        """Start ``run`` under supervision; returns once its first run has reported
        ready (or failed: it is then being restarted, and the daemon goes on)."""
        if name in self.services:
            raise ValueError(f"a service named {name!r} is already supervised")
        self.services[name] = ServiceState(name)
        await nursery.start(self._supervise, name, run)

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: s.as_dict() for name, s in self.services.items()}

    def stop(self, name: str) -> None:
        """Cancel service ``name`` (its run is cancelled wherever it is) for good."""
        self._scopes[name].cancel()

    def delay(self, failures: int) -> float:
        """Seconds before run number ``failures + 1``: exponential, full jitter, capped."""
        return self._backoff.delay(failures, self._rng)

    async def _supervise(self, name: str, run: Service,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        state = self.services[name]
        ready = False
        failures = 0
        with trio.CancelScope() as self._scopes[name]:
            while True:
                state.state = "starting"
                began = trio.current_time()
                try:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(run)
                        state.state = "running"
                        state.next_attempt = None
                        if not ready:
                            ready = True
                            task_status.started()
                except Exception as exc:
                    if trio.current_time() - began >= _STABLE_AFTER:
                        failures = 0
                    failures += 1
                    delay = self.delay(failures)
                    state.state = "restarting"
                    state.restarts += 1
                    state.last_error = _describe(exc)
                    state.next_attempt = time.time() + delay
                    logger.error("service %s failed (%s); restarting in %.1f s", name,
                                 state.last_error, delay, exc_info=exc)
                    if not ready:
                        ready = True
                        task_status.started()
                    await trio.sleep(delay)
                    continue
                break  # the service returned: it ended on purpose
        state.state = "stopped"
        state.next_attempt = None
        if not ready:
            task_status.started()


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
