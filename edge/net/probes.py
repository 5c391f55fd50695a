"""What the server reports about itself: ``/healthz`` and ``/metrics``, assembled from
the parts :class:`~edge.net.server.Server` holds (the rendering is
:mod:`edge.ops.health`'s)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.asr.recognizer import RecognizerPool
from edge.ops import health as ops

if TYPE_CHECKING:
    from edge.net.server import Server


def health(server: Server) -> tuple[int, dict[str, Any]]:
    """``/healthz``: 200 when serving, 503 with reasons when degraded or stopping."""
    v, memory = server.services, server.engine.memory
    return ops.health(
        version=__version__, model=server.model_name, sessions=server.admission.current,
        max_sessions=server.config.server.max_sessions, clock=ops.clock_status(),
        microphone=v.room.status() if v.room else None,
        relay=v.relay.status() if v.relay else None,
        services=v.supervisor.status() if v.supervisor else {},
        stopping=server.stopping, recognizers=_pool_status(server),
        ingest=v.ingest.status() if v.ingest else None,
        journal=v.journal.status() if v.journal else None,
        min_free_bytes=_min_free_bytes(server),
        memory=memory.snapshot().status() if memory else None,
        jwks=v.jwks.store.status() if v.jwks else None,
        audit=v.auditor.status() if v.auditor else None,
        models=server.engine.models.status() if server.engine.models else None)


def metrics(server: Server) -> str:
    """``/metrics`` in the Prometheus text format."""
    v, memory, relay = server.services, server.engine.memory, server.services.relay
    return ops.render_metrics(
        server.stats, version=__version__, model=server.model_name,
        sessions_current=server.admission.current,
        max_sessions=server.config.server.max_sessions, clock=ops.clock_status(),
        microphone_state=v.room.state if v.room else "not_configured",
        listeners=server.listeners.current,
        relay_backlog=relay.backlog.events if relay else 0,
        relay_circuit_open=bool(relay and relay.circuit_open),
        relay_shed=relay.shed_events if relay else 0,
        relay_set_aside=getattr(relay, "set_aside_events", 0),
        ingest=v.ingest.status() if v.ingest else None,
        recognizers=_pool_status(server),
        memory=memory.snapshot().status() if memory else None,
        service_restarts=({name: s.restarts for name, s in v.supervisor.services.items()}
                          if v.supervisor else None),
        journal=v.journal.status() if v.journal else None,
        min_free_bytes=_min_free_bytes(server),
        jwks=v.jwks.store if v.jwks else None,
        audit_records=v.auditor.by_action if v.auditor else None)


def _min_free_bytes(server: Server) -> int:
    return server.config.journal.min_free_mb * 1048576


def _pool_status(server: Server) -> dict[str, int | str] | None:
    pool = server.engine.recognizers
    return pool.status() if isinstance(pool, RecognizerPool) else None
