"""The composition root: turns a :class:`Config` into a running daemon, in order.

Order matters and is the contract with systemd and with clients: keys first (a bad
key is a config error, exit 2), then the model (seconds; a broken model is exit 1),
then the socket. "Ready" means the model is loaded and the socket accepts.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import socket
import threading
from pathlib import Path

import trio

from edge.asr.vosk import LoadedModel, load_model, load_speaker_model
from edge.core.auth import AuthSettings, RevocationFile
from edge.core.config import Config, journal_path, state_dir, voiceprints_path
from edge.core.errors import ConfigError
from edge.journal.db import Journal, JournalError
from edge.journal.service import JournalService
from edge.net.room import Room
from edge.net.server import Server
from edge.ops.sdnotify import keep_watchdog_fed, notify, watchdog_interval
from edge.relay.sender import Relay, RelaySettings
from edge.speakers import SpeakerIdentification, VoiceprintStore

logger = logging.getLogger(__name__)

DEV_SECRET_NAME = "dev-jwt-secret"
CREDENTIAL_NAME = "jwt-secret"


def dev_secret_path(config: Config) -> Path:
    return state_dir(config) / DEV_SECRET_NAME


def ensure_dev_secret(config: Config) -> str:
    """The development secret, created (0600, random 256 bits) on first use. Blocking."""
    path = dev_secret_path(config)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def signing_key(config: Config, *, dev: bool = False) -> str:
    """The HS256 secret or RS256 public key the server verifies with. Blocking (files).

    HS256 looks, in order, at ``auth.secret`` (or ``EDGE_JWT_SECRET``),
    ``auth.secret_file``, the systemd credential ``jwt-secret``, and, with ``dev``,
    the generated development secret. Raises :class:`ConfigError` naming the key.
    """
    a = config.auth
    if a.algorithm == "RS256":
        if not a.public_key_file:
            raise ConfigError("auth.public_key_file", "RS256 needs a PEM public key file")
        return _read_key_file("auth.public_key_file", a.public_key_file)
    if a.secret:
        secret = a.secret
    elif a.secret_file:
        secret = _read_key_file("auth.secret_file", a.secret_file).strip()
    elif os.environ.get("CREDENTIALS_DIRECTORY") and (
            Path(os.environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME).is_file():
        secret = (Path(os.environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME).read_text().strip()
    elif dev:
        secret = ensure_dev_secret(config)
    else:
        raise ConfigError("auth.secret", "no JWT secret configured: set EDGE_JWT_SECRET, "
                          "auth.secret_file, or run `edge serve --dev` for a development secret")
    if len(secret.encode()) < 32:
        raise ConfigError("auth.secret", "the HS256 secret must be at least 32 bytes")
    return secret


def _read_key_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc


def auth_settings(config: Config, *, dev: bool = False) -> AuthSettings:
    a = config.auth
    return AuthSettings(algorithm=a.algorithm, key=signing_key(config, dev=dev),
                        issuer=a.issuer or None, audience=a.audience or None,
                        leeway=a.leeway, max_lifetime=a.max_token_lifetime)


async def run(config: Config, *, dev: bool = False,
              task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until cancelled. Raises ConfigError / RecognizerError before ready."""
    auth = auth_settings(config, dev=dev)
    revocations = None
    if config.auth.revocation_file:
        revocations = RevocationFile(config.auth.revocation_file)
        await trio.to_thread.run_sync(revocations.reload_if_changed)
    logger.info("loading model %s", config.recognizer.model or "(default package)")
    model: LoadedModel = await trio.to_thread.run_sync(load_model, config.recognizer.model or None)
    logger.info("model %s loaded from %s", model.name, model.path)
    model, speakers = await open_speakers(config, model)
    journal = await open_journal(config, model.name) if config.journal.enabled else None
    server = Server(config, model, auth, revocations=revocations, journal=journal,
                    speakers=speakers)
    async with trio.open_nursery() as nursery:
        if journal is not None:
            await nursery.start(journal.run)
        if config.relay.enabled:
            assert journal is not None  # the config requires it
            r = config.relay
            relay = Relay(RelaySettings(
                url=r.url, token=relay_token(config), batch_events=r.batch_events,
                batch_bytes=r.batch_bytes, max_backlog_bytes=r.max_backlog_bytes,
                ack_timeout=r.ack_timeout, backoff_max=r.backoff_max,
                cafile=r.cafile or None), journal)
            await nursery.start(relay.run)
            server.relay = relay
            logger.info("relaying the journal to %s as %s", _without_query(r.url),
                        device_id(config))
        if config.microphone.enabled:
            room = Room(config, server.recognizer_factory, server.limiter, server.stats,
                        journal=journal, speakers=speakers)
            await nursery.start(room.run)
            server.room = room
            logger.info("room microphone %r: %s", config.microphone.device, room.state)
        else:
            logger.info("no room microphone configured (microphone.enabled = false): serving "
                        "client-streamed sessions only")
        await nursery.start(server.run)
        notify("READY=1")
        logger.info("ready")
        interval = watchdog_interval()
        if interval is not None:
            nursery.start_soon(keep_watchdog_fed, interval)
        if threading.current_thread() is threading.main_thread():
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        task_status.started(server)


def device_id(config: Config) -> str:
    """This device's id in journals (and upstream): ``relay.device_id`` or the host name."""
    return config.relay.device_id or socket.gethostname() or "edge"


def relay_token(config: Config) -> str:
    r = config.relay
    if r.token:
        return r.token
    try:
        return Path(r.token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError("relay.token_file", f"cannot read {r.token_file}: "
                          f"{exc.strerror}") from exc


async def open_journal(config: Config, model_name: str) -> JournalService:
    """Open the journal (setting a damaged one aside) and close what a crash left open."""
    path = journal_path(config)
    try:
        journal = await trio.to_thread.run_sync(
            functools.partial(Journal.open, path, device_id=device_id(config)))
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
                          keep_unrelayed=config.relay.enabled, model=model_name)


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]  # a token in the query string must not reach the log


async def open_speakers(config: Config, model: LoadedModel
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
    spk = await trio.to_thread.run_sync(load_speaker_model, path)
    s = config.speakers
    speakers = SpeakerIdentification(
        VoiceprintStore(voiceprints_path(config), threshold=s.identification_threshold),
        diarization_threshold=s.diarization_threshold, max_speakers=s.max_speakers)
    status = await trio.to_thread.run_sync(speakers.refresh)
    logger.info("speaker model %s loaded; %s", spk.path,
                f"{status.enrolled} enrolled speaker(s)" if status.names
                else "enrolled names off (see the error above)")
    return model.with_speaker_model(spk), speakers


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    """SIGTERM (systemd's stop) and SIGINT end the daemon cleanly, exit code 0."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("stopping on %s", signal.Signals(signum).name)
            notify("STOPPING=1")
            scope.cancel()
            return
