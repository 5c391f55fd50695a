"""The composition root: turns a :class:`Config` into a running daemon, in order.

The one place that wires: every long-lived part (keys, the model, the recogniser pool
and limiter, the admission books, the journal, the room's microphone and hub, the
relay, the revocation watcher, retention) is built here and handed to whoever uses it;
tests and benchmarks build the daemon through :func:`run` too, supplying stand-ins as
:class:`Parts`.

Order matters and is the contract with systemd and with clients: keys first (a bad
key, or a data key that is missing or does not open the journal, is a config error,
exit 2), then the model (seconds; a broken model is exit 1),
then the background services, then the socket. "Ready" means the model is loaded and
the socket accepts.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import trio

from edge.asr.memory import MemoryBudget, read_rss
from edge.asr.modeldir import model_path
from edge.asr.models import ModelRegistry
from edge.asr.recognizer import RecognizerFactory, RecognizerPool
from edge.asr.vosk import LoadedModel, load_model, load_speaker_model
from edge.asr.warmup import Warmup, pool_target
from edge.audio.source import Source
from edge.core.admission import Admission, Admissions
from edge.core.audit import discard
from edge.core.auth import AuthSettings
from edge.core.config import Config, journal_path, state_dir, voiceprints_path
from edge.core.errors import ConfigError, RecognizerError, Refusal
from edge.core.jwks import CACHE_NAME, KeyStore, ssl_context
from edge.core.keys import auth_settings, device_id
from edge.core.model_table import installed_models
from edge.core.revocations import RevocationFile
from edge.core.stats import Stats
from edge.core.terms import FixedTerms, TermAnnotator, TermFile
from edge.crypto.datakey import DataKey, DataKeyError
from edge.crypto.rotation import open_key
from edge.journal.auditor import Auditor
from edge.journal.db import Journal, JournalError, JournalKeyError
from edge.journal.service import JournalService
from edge.net.boundary import Engine, Services
from edge.net.gate import Gate
from edge.net.hub import Hub
from edge.net.jwks import JwksRefresher
from edge.net.peers import PeerContext, main_port_routes, start_listeners
from edge.net.revocation import RevocationWatcher
from edge.net.room import Room
from edge.net.server import Server
from edge.ops.sdnotify import keep_watchdog_fed, notify, watchdog_interval
from edge.ops.supervisor import Supervisor
from edge.ops.terms import TermWatcher, open_terms
from edge.protocols.scriptix import model_language
from edge.relay.mqtt import MqttClientSettings, MqttRelay, mqtt_relay_settings
from edge.relay.mqtt_ingest import MqttIngest, mqtt_ingest
from edge.relay.outbox import OutboxRelay
from edge.relay.sender import Relay, RelaySettings
from edge.speakers import SpeakerIdentification, VoiceprintStore, VoiceprintStoreError
from edge.speakers.voiceprints import encrypt_plaintext_store

logger = logging.getLogger(__name__)

MAX_RELAYING_DEVICES = 64  # downstream devices relaying into this one at once
def jwks_refresher(config: Config, store: KeyStore, key: DataKey | None) -> JwksRefresher:
    """The service that keeps the identity provider's key set (blocking: reads
    ``auth.jwks_cafile``; a CA file that cannot be used is a ConfigError)."""
    a = config.auth
    try:
        context = ssl_context(a.jwks_cafile or None)
    except (OSError, ValueError) as exc:
        raise ConfigError("auth.jwks_cafile", f"cannot use {a.jwks_cafile} as CA "
                          f"certificates: {getattr(exc, 'strerror', None) or exc}") from exc
    if key is None:
        logger.warning("auth.jwks: no data key (the journal is off): the key set is kept in "
                       "memory only, and a restart without the network admits no token "
                       "of the identity provider until it is reached")
    return JwksRefresher(store, context=context, refresh=a.jwks_refresh,
                         cooldown=a.jwks_cooldown, timeout=a.jwks_timeout,
                         cache_path=state_dir(config) / CACHE_NAME, data_key=key)


@dataclass(frozen=True)
class Parts:
    """Parts a caller supplies instead of having them built: a model already loaded, a
    stand-in recogniser factory or microphone, a journal it opened. Tests and
    benchmarks use it; ``edge serve`` supplies none."""

    auth: AuthSettings | None = None
    model: LoadedModel | None = None
    recognizer_factory: RecognizerFactory | None = None
    microphone: Source | None = None
    journal: JournalService | None = None
    data_key: DataKey | None = None
    # Warm the pool after ready: None follows recognizer.warm_at_start when the daemon
    # loads its own model, and is off when the caller supplies one (tests, benchmarks).
    warm_up: bool | None = None


async def run(config: Config, *, dev: bool = False, parts: Parts = Parts(),
              task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
    """Build the daemon from ``config`` and run it until cancelled or stopped by a signal.

    Raises ConfigError / RecognizerError before ready. Every long-lived part is built
    here and handed to whoever uses it; background services run under one
    :class:`~edge.ops.supervisor.Supervisor`; ``task_status`` gets the Server once the
    model is loaded, the services are up and the socket accepts. SIGTERM or SIGINT
    starts a graceful stop (:func:`stop_gracefully`); a second one stops at once.
    """
    auth = parts.auth or auth_settings(config, dev=dev)
    key = parts.data_key
    if key is None and (config.journal.enabled or config.recognizer.speaker_model):
        key = await open_data_key(config, dev=dev)
    revocations = None
    if config.auth.revocation_file:
        revocations = RevocationFile(config.auth.revocation_file)
        await trio.to_thread.run_sync(revocations.reload_if_changed)
    terms = await open_terms(config)
    model, speakers, model_rss = await open_model(config, parts.model, key, terms)
    journal = parts.journal
    if journal is None and config.journal.enabled:
        assert key is not None  # opened above when the journal is on
        journal = await open_journal(config, model.name, key)
    stats = Stats()
    limiter = trio.CapacityLimiter(config.recognizer.threads or os.cpu_count() or 1)
    recognizers, memory, warmup = recognizer_parts(config, parts, model, model_rss,
                                                   limiter)
    models = model_registry(config, model, recognizers, memory, terms)
    s = config.server
    admissions = Admissions(
        sessions=Admission(s.max_sessions, s.retry_after),
        listeners=Admission(config.microphone.max_listeners, s.retry_after),
        relays=Admission(MAX_RELAYING_DEVICES, s.retry_after))
    room = None
    if config.microphone.enabled:
        room_factory, language, name = await room_recognizers(config, models, recognizers,
                                                              model.name)
        room = Room(config, parts.microphone or microphone(config),
                    Hub(replay_size=config.microphone.replay_size),
                    memory.factory(room_factory), limiter, stats, journal=journal,
                    speakers=speakers, language=language, model_name=name)
    relay, ingest = relay_parts(config, journal)
    jwks = (jwks_refresher(config, auth.jwks, key) if auth.jwks is not None else None)
    # The audit trail: the front door tells it every access to patient data.
    auditor = (Auditor(journal, retention_days=config.audit.retention_days,
                       purge_interval=config.journal.purge_interval,
                       keep_unrelayed=config.relay.enabled)
               if journal is not None else None)
    supervisor = Supervisor()
    peer_context = PeerContext(auth=auth, model_name=model.name,
                               model_sample_rate=model.sample_rate)
    server = Server(
        config, Gate(auth, revocations),
        Engine(model.name, stats, limiter, recognizers, admissions, memory, models),
        Services(journal=journal, speakers=speakers, room=room, relay=relay, ingest=ingest,
                 supervisor=supervisor, jwks=jwks, auditor=auditor),
        peers=main_port_routes(config, peer_context),
        audit=auditor if auditor is not None else discard)
    async with trio.open_nursery() as nursery:
        await start_services(nursery, supervisor, server, revocations, terms, memory,
                             auditor)
        await nursery.start(server.run)
        await start_listeners(nursery, supervisor, server, config, peer_context)
        notify("READY=1")
        logger.info("ready")
        if warmup is not None:
            await supervisor.start(nursery, "warmup", warmup.run)
        interval = watchdog_interval()
        if interval is not None:
            nursery.start_soon(keep_watchdog_fed, interval)
        if threading.current_thread() is threading.main_thread():
            nursery.start_soon(_stop_on_signal, server, supervisor, nursery.cancel_scope)
        task_status.started(server)


def recognizer_parts(config: Config, parts: Parts, model: LoadedModel, model_rss: int,
                     limiter: trio.CapacityLimiter
                     ) -> tuple[RecognizerFactory, MemoryBudget, Warmup | None]:
    """The recognisers sessions take (the pool, unless ``parts`` supplies a factory), the
    memory budget that watches them, and the warm-up to run once ready (if any)."""
    rc = config.recognizer
    pool_size = pool_target(rc.warm_recognizers, rc.memory_budget_mb, rc.recognizer_memory_mb)
    recognizers = parts.recognizer_factory or RecognizerPool(model.recognizer, pool_size)
    memory = MemoryBudget(
        rc.memory_budget_mb, model_rss, recognizer_mb=rc.recognizer_memory_mb,
        reserved=1 if config.microphone.enabled else 0,
        pool=recognizers if isinstance(recognizers, RecognizerPool) else None)
    warm_up = parts.warm_up if parts.warm_up is not None else (
        rc.warm_at_start and parts.model is None)
    warmup = (Warmup(recognizers, limiter, pool_size)
              if warm_up and isinstance(recognizers, RecognizerPool) else None)
    return recognizers, memory, warmup


async def room_recognizers(config: Config, models: ModelRegistry,
                           recognizers: RecognizerFactory, model_name: str
                           ) -> tuple[RecognizerFactory, str, str]:
    """The room's recognisers, language and model name: ``microphone.language``'s
    model's (loaded now and held while the daemon runs), or the default model's
    (``recognizers``, named ``model_name``)."""
    language = models.table.choose(config.microphone.language or None)
    if not config.microphone.language or language == models.table.default:
        return recognizers, models.table.default, model_name
    assert language is not None  # checked with the config
    try:
        lease = await models.acquire(language)  # never released: the room never ends
    except Refusal as exc:
        raise RecognizerError(f"microphone.language: {exc.message}") from exc
    return lease.recognizers, lease.language, lease.model.name


def model_registry(config: Config, model: LoadedModel, recognizers: RecognizerFactory,
                   memory: MemoryBudget, terms: FixedTerms | TermFile | None
                   ) -> ModelRegistry:
    """The installed models (edge.asr.models): the start model with its recognisers,
    the others loaded on first use as it was (speaker model and terms marked)."""
    rc = config.recognizer
    pool_size = pool_target(rc.warm_recognizers, rc.memory_budget_mb, rc.recognizer_memory_mb)

    def load(path: Path) -> LoadedModel:
        loaded = load_model(path).with_speaker_model(model.speaker_model)
        if terms is not None:
            loaded = loaded.with_terms(TermAnnotator(terms, model_language(loaded.name)))
        return loaded

    table = installed_models(config)
    registry = ModelRegistry(table, rc.memory_budget_mb, load=load, memory=memory,
                             make_pool=lambda m: RecognizerPool(m.recognizer, pool_size))
    registry.add_loaded(table.default, model, recognizers)
    return registry


def relay_parts(config: Config, journal: JournalService | None
                ) -> tuple[OutboxRelay | None, MqttIngest | None]:
    """The relay upstream (WebSocket or MQTT) and the MQTT ingest, each if configured."""
    relay: OutboxRelay | None = None
    if config.relay.enabled:
        assert journal is not None  # the config requires it
        if config.relay.transport == "mqtt":
            relay = MqttRelay(mqtt_relay_settings(config), journal)
        else:
            relay = Relay(relay_settings(config), journal)
    ingest = None
    if config.ingest.mqtt.enabled:
        assert journal is not None  # the config requires it
        ingest = mqtt_ingest(config, journal)
    return relay, ingest


async def open_model(config: Config, model: LoadedModel | None, key: DataKey | None,
                     terms: FixedTerms | TermFile | None
                     ) -> tuple[LoadedModel, SpeakerIdentification | None, int]:
    """The model (loaded in a worker thread unless given), speaker identification, the
    process's RSS once they are loaded (before any recogniser), with ``terms`` marked."""
    if model is None:
        table, rc = installed_models(config), config.recognizer
        source = table.models[table.default] if rc.models else rc.model or None
        logger.info("loading model %s", source or "(default package)")
        model = await trio.to_thread.run_sync(
            lambda: load_model(model_path(source) if source else None))
        logger.info("model %s loaded from %s", model.name, model.path)
    model, speakers = await open_speakers(config, model, key)
    model_rss = await trio.to_thread.run_sync(read_rss)
    if terms is not None:
        model = model.with_terms(TermAnnotator(terms, model_language(model.name)))
    return model, speakers, model_rss


async def start_services(nursery: trio.Nursery, supervisor: Supervisor, server: Server,
                         revocations: RevocationFile | None,
                         terms: FixedTerms | TermFile | None, memory: MemoryBudget,
                         auditor: Auditor | None = None) -> None:
    """The daemon's background services, each under ``supervisor``, before it serves."""
    config, v = server.config, server.services
    if v.jwks is not None:
        await supervisor.start(nursery, "jwks", v.jwks.run)
    if v.journal is not None:
        await supervisor.start(nursery, "retention", v.journal.run)
    if auditor is not None:
        await supervisor.start(nursery, "audit", auditor.run)
    await supervisor.start(nursery, "memory", memory.run)
    if revocations is not None:
        await supervisor.start(nursery, "revocations",
                               RevocationWatcher(revocations, server.engine.admissions).run)
    if isinstance(terms, TermFile):
        await supervisor.start(nursery, "terms", TermWatcher(terms).run)
    if v.relay is not None:
        await supervisor.start(nursery, "relay", v.relay.run)
        logger.info("relaying the journal to %s as %s", relay_target(config),
                    device_id(config))
    if v.ingest is not None:
        await supervisor.start(nursery, "mqtt_ingest", v.ingest.run)
        logger.info("consuming relayed journals from %s (%s)",
                    MqttClientSettings(config.ingest.mqtt.url, "").where,
                    config.ingest.mqtt.subscription)
    if v.room is not None:
        await supervisor.start(nursery, "room", v.room.run)
        logger.info("room microphone %r: %s", config.microphone.device, v.room.state)
    else:
        logger.info("no room microphone configured (microphone.enabled = false): serving "
                    "client-streamed sessions only")


def microphone(config: Config) -> Source:
    """The room's PyAudio source (PyAudio is imported only when the microphone is on)."""
    from edge.audio.capture import MicSource

    m = config.microphone
    return MicSource(m.device, sample_rate=m.sample_rate, chunk_ms=m.chunk_ms,
                     backoff_max=m.retry_max)


def relay_settings(config: Config) -> RelaySettings:
    r = config.relay
    return RelaySettings(url=r.url, token=relay_token(config), batch_events=r.batch_events,
                         batch_bytes=r.batch_bytes, max_backlog_bytes=r.max_backlog_bytes,
                         ack_timeout=r.ack_timeout, backoff_max=r.backoff_max,
                         cafile=r.cafile or None)


async def stop_gracefully(server: Server, supervisor: Supervisor) -> None:
    """Refuse new sessions, abandon the relay's batch in flight (it is sent again at the
    next start), let the room and every live session finish the utterance in progress
    (journaled, sent, then ``server_shutdown`` and close 1012), and return when they
    all have. The caller bounds it with ``server.shutdown_grace``."""
    server.shutdown()
    if "relay" in supervisor.services:
        supervisor.stop("relay")
    if server.room is not None:
        server.room.stop()
    await server.wait_idle()


def relay_token(config: Config) -> str:
    r = config.relay
    if r.token:
        return r.token
    try:
        return Path(r.token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError("relay.token_file", f"cannot read {r.token_file}: "
                          f"{exc.strerror}") from exc


async def open_data_key(config: Config, *, dev: bool = False) -> DataKey:
    """The data key (settling an interrupted rotation), and the voiceprint store sealed
    if an older edge left it in plaintext. Raises DataKeyError (exit 2)."""
    key = await trio.to_thread.run_sync(functools.partial(open_key, config, dev=dev))
    if key.development:
        logger.warning("the journal's key is a development key (%s): for patient data, "
                       "seal one with `edge keys init --tang URL` (or --tpm2)", key.describe())
    else:
        logger.info("data key: %s", key.describe())
    try:
        await trio.to_thread.run_sync(encrypt_plaintext_store, voiceprints_path(config), key)
    except VoiceprintStoreError as exc:
        logger.error("%s", exc)
    return key


async def open_journal(config: Config, model_name: str, key: DataKey) -> JournalService:
    """Open the journal (setting a damaged one aside, encrypting a plaintext one,
    migrating an older one: its sessions get the language the config gives their
    model) and close what a crash left open. A journal the key does not open is exit 2."""
    path = journal_path(config)
    table = installed_models(config)
    try:
        journal = await trio.to_thread.run_sync(functools.partial(
            Journal.open, path, device_id=device_id(config), key=key,
            model_languages=table.by_model_name()))
    except JournalKeyError as exc:
        raise DataKeyError(key.source.config_key, str(exc)) from None
    except JournalError as exc:
        raise ConfigError("journal.path", str(exc)) from exc
    interrupted = await trio.to_thread.run_sync(journal.end_open_sessions)
    if interrupted:
        logger.warning("journal: %d session(s) were cut off by the last stop; marked "
                       "interrupted", interrupted)
    logger.info("journal %s", path)
    j = config.journal
    return JournalService(journal, retention_days=j.retention_days,
                          purge_interval=j.purge_interval,
                          keep_unrelayed=config.relay.enabled, model=model_name,
                          language=table.default,
                          failing_seconds=j.failing_seconds, key_source=key.describe())


def relay_target(config: Config) -> str:
    """Where the relay sends, for the log (no token, no password)."""
    if config.relay.transport == "mqtt":
        m = config.relay.mqtt
        return f"{MqttClientSettings(m.url, '').where} ({m.ack_level} acks)"
    return _without_query(config.relay.url)


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]  # a token in the query string must not reach the log


async def open_speakers(config: Config, model: LoadedModel, key: DataKey | None
                        ) -> tuple[LoadedModel, SpeakerIdentification | None]:
    """Load the speaker model (if configured) and the voiceprints.

    A broken speaker model stops the start (RecognizerError, exit 1) as a broken model
    does; a damaged voiceprint file does not: it is logged, and the daemon serves
    without enrolled names.
    """
    path = config.recognizer.speaker_model
    if not path:
        logger.info("no speaker model configured (recognizer.speaker_model): transcripts "
                    "carry no speaker labels")
        return model, None
    assert key is not None  # opened by run() when a speaker model is configured
    spk = await trio.to_thread.run_sync(load_speaker_model, path)
    s = config.speakers
    speakers = SpeakerIdentification(
        VoiceprintStore(voiceprints_path(config), key=key,
                        threshold=s.identification_threshold),
        diarization_threshold=s.diarization_threshold, max_speakers=s.max_speakers)
    status = await trio.to_thread.run_sync(speakers.refresh)
    logger.info("speaker model %s loaded; %s", spk.path,
                f"{status.enrolled} enrolled speaker(s)" if status.names
                else "enrolled names off (see the error above)")
    return model.with_speaker_model(spk), speakers


async def _stop_on_signal(server: Server, supervisor: Supervisor,
                          scope: trio.CancelScope) -> None:
    """SIGTERM (systemd's stop) and SIGINT stop the daemon gracefully, exit code 0,
    within ``server.shutdown_grace``; a second signal stops it at once."""
    grace = server.config.server.shutdown_grace
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if server.stopping:
                logger.warning("%s again: stopping at once", signal.Signals(signum).name)
                scope.cancel()
                return
            logger.info("stopping on %s: finishing %d live session(s) within %gs",
                        signal.Signals(signum).name, server.live_connections, grace)
            notify("STOPPING=1")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_within, server, supervisor, grace, scope)
                async for signum in signals:
                    logger.warning("%s again: stopping at once",
                                   signal.Signals(signum).name)
                    scope.cancel()
                    return


async def _stop_within(server: Server, supervisor: Supervisor, grace: float,
                       scope: trio.CancelScope) -> None:
    with trio.move_on_after(grace) as waited:
        await stop_gracefully(server, supervisor)
    if waited.cancelled_caught:
        logger.warning("shutdown grace of %gs is over; closing what is left", grace)
    scope.cancel()
