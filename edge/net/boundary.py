"""The connection boundary: the one admit-and-run path every client goes through,
whatever row or port it came by, and the graceful stop.

:meth:`Boundary.admit_and_run` admits what a route admitted (an
:data:`~edge.net.routes.Entry`) against its admission book (a session also against the
memory budget), opens the door, builds the connection (a
:class:`~edge.net.session.Session`, a :class:`~edge.net.listener.RoomListener` or a
:class:`~edge.relay.ingest.RelayIngest`) and runs it inside a boundary that catches
exceptions, so one client can never take the daemon down. It is also the one place
that tells the audit trail (:data:`~edge.core.audit.AccessSink`) of sessions and
refusals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from edge.asr.memory import MemoryBudget
from edge.asr.models import ModelLease, ModelRegistry
from edge.asr.recognizer import RecognizerFactory
from edge.core.admission import Admission, Admissions, Ticket
from edge.core.audit import FAILED, OK, REFUSED, Access, AccessSink, discard
from edge.core.auth import Claims
from edge.core.close_codes import CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER
from edge.core.config import Config
from edge.core.errors import Refusal
from edge.core.stats import Stats
from edge.journal.service import JournalService
from edge.net.channel import Channel
from edge.net.connection import Connection, SessionInfo
from edge.net.door import Door, Handle
from edge.net.listener import RoomListener
from edge.net.room import Room
from edge.net.routes import Admitted, Entry, Listen, Relayed, Route
from edge.net.session import Session
from edge.net.session_model import SessionModel, same
from edge.ops.supervisor import Supervisor
from edge.relay.ingest import RelayIngest
from edge.relay.outbox import OutboxRelay as Relay
from edge.speakers import UNAVAILABLE, SpeakerIdentification, SpeakerStatus

if TYPE_CHECKING:
    from edge.journal.auditor import Auditor
    from edge.net.jwks import JwksRefresher
    from edge.relay.mqtt_ingest import MqttIngest

logger = logging.getLogger(__name__)

_INTERNAL_CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Engine:
    """What every session runs on: the model's name, the counters, the limiter every
    Vosk call takes, the recognisers (the pool, or a stand-in), the admission books and
    the memory budget recognisers are counted against (None: not counted), and the
    installed models (edge.asr.models), whose start model's recognisers are these."""

    model_name: str
    stats: Stats
    limiter: trio.CapacityLimiter
    recognizers: RecognizerFactory
    admissions: Admissions
    memory: MemoryBudget | None = None
    models: ModelRegistry | None = None  # one model a language (None: ``recognizers`` only)


@dataclass(frozen=True)
class Services:
    """The daemon's optional parts the server routes to or reports on (None: off)."""

    journal: JournalService | None = None
    speakers: SpeakerIdentification | None = None  # None: no speaker model
    room: Room | None = None
    relay: Relay | None = None  # not relaying upstream
    ingest: MqttIngest | None = None  # not consuming from an MQTT broker
    supervisor: Supervisor | None = None
    jwks: JwksRefresher | None = None  # no identity provider key set (auth.jwks_url)
    auditor: Auditor | None = None  # no journal, so no audit trail


class Boundary:
    """Admits and runs every client; counts them live for :meth:`shutdown`."""

    def __init__(self, config: Config, engine: Engine, services: Services,
                 audit: AccessSink = discard) -> None:
        self.config = config
        self.engine = engine
        self.services = services
        self.audit = audit
        # Sessions' recognisers are counted against the memory budget and recycled.
        memory = engine.memory
        self._session_recognizers = (memory.factory(engine.recognizers) if memory
                                     else engine.recognizers)
        self.stopping = False
        self._live: set[Handle] = set()
        self._idle = trio.Event()

    def shutdown(self) -> None:
        """Begin a graceful stop: refuse new handshakes (503 with Retry-After, or close
        1012 in band) and ask every live connection to finish its work in hand and
        close with 1012. :meth:`wait_idle` returns when they all have."""
        self.stopping = True
        for handle in list(self._live):
            handle.shutdown()
        if not self._live:
            self._idle.set()

    @property
    def live_connections(self) -> int:
        return len(self._live)

    async def wait_idle(self) -> None:
        """Wait until no connection is live after :meth:`shutdown`."""
        await self._idle.wait()


    async def admit_and_run(self, door: Door, entry: Entry, route: Route | None,
                            peer: str) -> None:
        """The one way in, whatever the row or port: admit ``entry`` against its book
        (a session also against the memory budget), open the door, run the connection
        in the boundary until it ends; every step told to the audit trail."""
        handle = Handle()
        action = _action(entry)
        lease: ModelLease | None = None
        try:
            self._check_running()
            if isinstance(entry, Admitted):
                self._check_memory()
                lease = await self._model_for(entry)
            ticket = self._book(entry).admit(str(uuid.uuid4()), entry.claims,
                                             handle.revoke)
        except Refusal as exc:
            if lease is not None:
                lease.release()
            exc.in_band = entry.in_band
            self.refused(exc, action, peer, entry.claims)
            await door.refuse(exc)
            return
        try:
            await self._run(door, entry, route, peer, handle, ticket, lease)
        finally:
            if lease is not None:
                lease.release()

    async def _model_for(self, entry: Admitted) -> ModelLease | None:
        """The session's language's model, loaded if it is not (503 if it cannot be)."""
        models = self.engine.models
        if models is None:
            return None
        return await models.acquire(entry.language or models.table.default)

    async def _run(self, door: Door, entry: Entry, route: Route | None, peer: str,
                   handle: Handle, ticket: Ticket, lease: ModelLease | None) -> None:
        with ticket, self._live_while(handle):
            channel = await door.open()
            if channel is None:
                return
            connection = await self._connect(entry, channel, ticket.session_id, lease)
            handle.attach(connection)
            detail: dict[str, str | int] = {"dialect": _dialect(entry)}
            if route is not None:
                detail["route"] = route.path
            if lease is not None:
                detail["language"] = lease.language
            self.audit(Access.by(entry.claims, _action(entry), object=ticket.session_id, peer=peer,
                                 detail=detail))
            outcome = await self._run_session(connection, entry)
            if isinstance(connection, Session):
                self.audit(Access.by(entry.claims, "session.end", outcome=outcome,
                                     object=ticket.session_id, peer=peer, detail={
                                         "audio_seconds": round(connection.audio_seconds),
                                         "language": connection.info.language}))
                if connection.enrolment is not None:
                    name, outcome, reason = connection.enrolment
                    self.audit(Access.by(entry.claims, "voiceprint.enrol", outcome=outcome,
                                         reason=reason, object=name, peer=peer))

    def _book(self, entry: Entry) -> Admission:
        books = self.engine.admissions
        return (books.sessions if isinstance(entry, Admitted)
                else books.listeners if isinstance(entry, Listen) else books.relays)

    async def _connect(self, entry: Entry, channel: Channel, session_id: str,
                       lease: ModelLease | None = None) -> Connection:
        """The connection ``entry`` runs as, on ``channel``."""
        if isinstance(entry, Relayed):
            assert self.services.journal is not None  # RelayAdmitter admits none without one
            info = SessionInfo(session_id=session_id, claims=entry.claims,
                               model_name=self.engine.model_name,
                               default_rate=self.config.recognizer.sample_rate)
            return RelayIngest(channel, info, self.config, self.engine.stats, self.services.journal)
        if isinstance(entry, Listen):
            assert self.services.room is not None  # LiveAdmitter admits no listener without one
            info = await self._session_info(session_id, entry.claims, None)
            return RoomListener(channel, info, self.config, self.engine.stats, self.services.room,
                                entry.since_seq)
        info = await self._session_info(session_id, entry.claims, entry.declared_rate)
        recognizers = self._session_recognizers
        memory = self.engine.memory
        model = None
        if lease is not None:
            info = dataclasses.replace(info, model_name=lease.model.name,
                                       language=lease.language)
            if lease.recognizers is not self.engine.recognizers:  # another language's
                recognizers = (memory.factory(lease.recognizers) if memory
                               else lease.recognizers)
            # The session holds the lease, and may trade it for another language's.
            model = SessionModel(info.model_name, info.language, recognizers, lease=lease,
                                 registry=self.engine.models,
                                 wrap=memory.factory if memory else same)
        return Session(channel, info, self.config, recognizers,
                       self.engine.limiter, self.engine.stats, self.services.journal,
                       speakers=self.services.speakers,
                       enroll=entry.enroll, dialect=entry.dialect,
                       dialect_name=entry.dialect_name, phrases=entry.phrases,
                       configure=entry.configure, model=model)

    async def _session_info(self, session_id: str, claims: Claims,
                            declared_rate: int | None) -> SessionInfo:
        speakers = await self._speaker_status()
        return SessionInfo(session_id=session_id, claims=claims, model_name=self.engine.model_name,
                           default_rate=self.config.recognizer.sample_rate,
                           declared_rate=declared_rate,
                           speaker_identification=speakers.enabled,
                           speaker_reason=speakers.reason)

    def _check_running(self) -> None:
        if self.stopping:
            raise Refusal("server_shutdown", "the server is restarting; retry shortly",
                          status=503, close_code=CLOSE_SERVICE_RESTART,
                          retry_after=self.config.server.retry_after)

    def _check_memory(self) -> None:
        """A live session needs a recogniser: refused (503) when the memory budget
        cannot hold one more (:meth:`MemoryBudget.refuses`)."""
        memory = self.engine.memory
        why = memory.refuses(self.engine.admissions.sessions.current) if memory else None
        if why is not None:
            raise Refusal("memory_budget", why, status=503, close_code=CLOSE_TRY_AGAIN_LATER,
                          retry_after=self.config.server.retry_after)

    def refused(self, exc: Refusal, action: str | None, peer: str,
                 claims: Claims | None = None) -> None:
        """Tell the audit trail of a refusal on a route that reads or writes patient
        data (``action``); the refusals of other paths are only counted."""
        if action is not None:
            self.audit(Access.by(claims, "handshake.refused", outcome=REFUSED,
                                 peer=peer, reason=exc.code, detail={"action": action}))

    @contextlib.contextmanager
    def _live_while(self, handle: Handle) -> Iterator[None]:
        """Count ``handle`` as live (for :meth:`shutdown`) for the ``with`` block."""
        self._live.add(handle)
        if self.stopping:
            handle.shutdown()
        try:
            yield
        finally:
            self._live.discard(handle)
            if self.stopping and not self._live:
                self._idle.set()

    async def _speaker_status(self) -> SpeakerStatus:
        """Speaker labelling as a new session will get it (re-reads changed voiceprints)."""
        if self.services.speakers is None:
            return UNAVAILABLE
        return await trio.to_thread.run_sync(self.services.speakers.refresh)

    async def _run_session(self, session: Connection, entry: Entry) -> str:
        """Run ``session`` to its end inside the boundary; its audit outcome."""
        dialect = _dialect(entry)
        self.engine.stats.count_session(dialect)
        self.engine.stats.sessions_current += 1
        kind = ("room listener" if isinstance(entry, Listen)
                else "relay from device" if isinstance(entry, Relayed)
                else f"{dialect} session")
        claims = entry.claims
        logger.info("%s %s started: sub=%s user_type=%s organization=%s department=%s",
                    kind, session.id, claims.sub, claims.user_type,
                    claims.organization or "-", claims.department or "-")
        try:
            stop = await session.run()
        except Exception:
            logger.exception("session %s failed", session.id)
            self.engine.stats.closes["internal_error"] += 1
            with trio.move_on_after(_INTERNAL_CLOSE_TIMEOUT):
                await session.fail()
            return FAILED
        finally:
            self.engine.stats.sessions_current -= 1
        self.engine.stats.closes[stop.reason] += 1
        if stop.notify:
            logger.info("session %s ended: %s (close %d)", session.id, stop.reason,
                        stop.close_code)
        else:
            logger.info("session %s ended: %s", session.id, stop.reason)
        return OK


def _action(entry: Entry) -> str:
    return ("session.start" if isinstance(entry, Admitted)
            else "room.listen" if isinstance(entry, Listen) else "relay.ingest")


def _dialect(entry: Entry) -> str:
    return (entry.dialect_name if isinstance(entry, Admitted)
            else "live" if isinstance(entry, Listen) else "relay")
