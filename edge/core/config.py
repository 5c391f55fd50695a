"""Configuration: frozen dataclasses read from TOML, secrets from ``EDGE_*``, CLI overrides.

Pure: no trio, no vosk. Precedence, lowest first: the dataclass defaults, the TOML
file, ``EDGE_*`` environment variables, command-line flags (only those given).
Every mistake raises :class:`~edge.core.errors.ConfigError` naming the dotted key.
``config/edge.toml`` documents every key; ``tests/test_config.py`` keeps it in step
with the dataclasses below.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from edge.core.errors import ConfigError
from edge.core.languages import primary_language
from edge.core.rates import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, is_sample_rate


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


MAX_ENDPOINT_SILENCE_MS = 60_000


@dataclass(frozen=True)
class RecognizerConfig:
    model: str = ""
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

_LOG_LEVELS = ("debug", "info", "warning", "error")
_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number"}


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
        values = _read_toml(Path(path))
    from_text: set[str] = set()
    env = os.environ if environ is None else environ
    for name, key in ENVIRONMENT.items():
        if env.get(name):
            _set(values, key, env[name])
            from_text.add(key)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(values, key, value)
            from_text.add(key)
    config = _build(values, from_text)
    _validate(config)
    return config


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("--config", f"file not found: {path}") from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    for section, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(section, "expected a [section] table")
    return data


def _set(values: dict[str, dict[str, Any]], key: str, value: Any) -> None:
    *tables, name = key.split(".")
    target: dict[str, Any] = values
    for table in tables:
        target = target.setdefault(table, {})
    target[name] = value


def _build(values: Mapping[str, Mapping[str, Any]], from_text: set[str]) -> Config:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    built: dict[str, Any] = {}
    for section, body in values.items():
        if section not in sections:
            raise ConfigError(section, f"unknown section (known: {', '.join(sections)})")
        cls = get_type_hints(Config)[section]
        built[section] = _build_section(section, cls, body, from_text)
    return Config(**built)


def _build_section(section: str, cls: type, body: Mapping[str, Any],
                   from_text: set[str]) -> Any:
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in body.items():
        key = f"{section}.{name}"
        if name not in hints:
            raise ConfigError(key, "unknown key")
        if dataclasses.is_dataclass(hints[name]):  # a nested table: [relay.mqtt]
            if not isinstance(value, dict):
                raise ConfigError(key, f"expected a [{key}] table")
            kwargs[name] = _build_section(key, hints[name], value, from_text)
            continue
        kwargs[name] = _coerce(key, hints[name], value, from_text=key in from_text)
    return cls(**kwargs)


def _coerce(key: str, kind: Any, value: Any, *, from_text: bool) -> Any:
    """Check ``value`` against the field type.

    Strings from the environment and the command line (``from_text``) are parsed; in
    the TOML file a value must already have the right type (``port = "8000"`` is an
    error, as TOML has integers).
    """
    if kind == tuple[str, ...]:
        return _words(key, value, from_text=from_text)
    if isinstance(value, str) and kind is not str and not from_text:
        raise ConfigError(key, f"expected {_KIND_NAMES[kind]}, got the string {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(key, f"expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(key, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:
            raise ConfigError(key, f"number too large: {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {kind!r} for {key}")  # programming error


def _words(key: str, value: Any, *, from_text: bool) -> tuple[str, ...]:
    """A TOML list of strings; from the environment or the command line, the words of a
    comma- or space-separated string."""
    if isinstance(value, str) and from_text:
        value = value.replace(",", " ").split()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, f'expected a list of strings such as ["RS256", "ES256"], '
                          f"got {value!r}")
    return tuple(value)


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be greater than 0, got {value!r}")


def parse_networks(key: str, text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                                  ...]:
    """``"10.0.0.0/8, 192.168.1.20"`` as networks; ConfigError naming ``key``."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(key, f"not an IP network: {part!r} (expected a comma-"
                              "separated list such as \"127.0.0.0/8, 192.168.1.0/24\")"
                              ) from None
    return tuple(networks)


def _validate_peers(c: Config) -> None:
    ports = {"server.port": c.server.port}
    for name, section in (("vosk_server", c.vosk_server), ("wyoming", c.wyoming)):
        parse_networks(f"{name}.trusted_networks", section.trusted_networks)
        if not 0 <= section.port <= 65535:
            raise ConfigError(f"{name}.port", f"must be between 0 and 65535, got "
                              f"{section.port}")
        if section.enabled and section.port and section.port in ports.values():
            other = next(k for k, v in ports.items() if v == section.port)
            raise ConfigError(f"{name}.port", f"{section.port} is already {other}")
        if section.enabled:
            ports[f"{name}.port"] = section.port
    if not is_sample_rate(c.vosk_server.sample_rate):
        raise ConfigError("vosk_server.sample_rate", f"must be between {MIN_SAMPLE_RATE} and "
                          f"{MAX_SAMPLE_RATE}")
    _positive("assemblyai.max_token_seconds", c.assemblyai.max_token_seconds)
    _validate_wyoming(c.wyoming)
    _validate_scriptix(c.scriptix)


def _validate_scriptix(s: ScriptixConfig) -> None:
    code = primary_language(s.language)
    if s.language and not (code.isascii() and code.isalpha() and 2 <= len(code) <= 3):
        raise ConfigError("scriptix.language", f"must be a language code such as \"ko\" "
                          f"or empty (from the model's name), got {s.language!r}")


def _validate_wyoming(w: WyomingConfig) -> None:
    parts = w.language.split("-")
    if w.language and not (
            parts[0].isascii() and parts[0].isalpha() and 2 <= len(parts[0]) <= 3
            and all(p.isascii() and p.isalnum() and 1 <= len(p) <= 8 for p in parts[1:])):
        raise ConfigError("wyoming.language", f"must be a language tag such as \"ko\" or "
                          f"\"en-US\", or empty (from the model's name), got {w.language!r}")


def _validate(c: Config) -> None:
    _validate_peers(c)
    s, a, r, au = c.server, c.auth, c.recognizer, c.audio
    if not 0 <= s.port <= 65535:
        raise ConfigError("server.port", f"must be between 0 and 65535, got {s.port}")
    if not s.path.startswith("/"):
        raise ConfigError("server.path", f"must start with '/', got {s.path!r}")
    if bool(s.tls_cert) != bool(s.tls_key):
        key = "server.tls_key" if s.tls_cert else "server.tls_cert"
        raise ConfigError(key, "tls_cert and tls_key must be set together")
    for name in (
        "max_sessions", "handshake_timeout", "idle_timeout", "max_session_seconds",
        "ping_interval", "ping_timeout", "send_timeout", "max_frame_bytes", "retry_after",
        "shutdown_grace",
    ):
        _positive(f"server.{name}", getattr(s, name))
    if s.max_frame_bytes < 4096:
        raise ConfigError("server.max_frame_bytes", "must be at least 4096 bytes")
    if a.algorithm not in ("HS256", "RS256"):
        raise ConfigError("auth.algorithm", f"must be HS256 or RS256, got {a.algorithm!r}")
    if a.algorithm == "RS256" and (a.secret or a.secret_file):
        raise ConfigError("auth.secret", "a shared secret is not used with RS256; "
                          "set auth.public_key_file")
    if a.algorithm == "HS256" and a.public_key_file:
        raise ConfigError("auth.public_key_file", "a public key is not used with HS256; "
                          "set auth.algorithm = \"RS256\"")
    if a.secret and a.secret_file:
        raise ConfigError("auth.secret_file", "set auth.secret or auth.secret_file, not both")
    _validate_jwks(a)
    if a.leeway < 0:
        raise ConfigError("auth.leeway", f"must not be negative, got {a.leeway}")
    _positive("auth.max_token_lifetime", a.max_token_lifetime)
    if a.expiry_warning < 0:
        raise ConfigError("auth.expiry_warning", f"must not be negative, got {a.expiry_warning}")
    if not is_sample_rate(r.sample_rate):
        raise ConfigError("recognizer.sample_rate", f"must be between {MIN_SAMPLE_RATE} and "
                          f"{MAX_SAMPLE_RATE}, got {r.sample_rate}")
    if r.threads < 0:
        raise ConfigError("recognizer.threads", f"must not be negative, got {r.threads}")
    if r.warm_recognizers < 0:
        raise ConfigError("recognizer.warm_recognizers",
                          f"must not be negative, got {r.warm_recognizers}")
    if r.memory_budget_mb < 0:
        raise ConfigError("recognizer.memory_budget_mb",
                          f"must not be negative, got {r.memory_budget_mb}")
    if r.recognizer_memory_mb < 0:
        raise ConfigError("recognizer.recognizer_memory_mb",
                          f"must not be negative, got {r.recognizer_memory_mb}")
    if not 0 <= r.endpoint_silence_ms <= MAX_ENDPOINT_SILENCE_MS:
        raise ConfigError("recognizer.endpoint_silence_ms",
                          f"must be between 0 (off) and {MAX_ENDPOINT_SILENCE_MS}, got "
                          f"{r.endpoint_silence_ms}")
    _positive("recognizer.lag_warning", r.lag_warning)
    _positive("recognizer.max_phrases", r.max_phrases)
    for name in ("diarization_threshold", "identification_threshold"):
        value = getattr(c.speakers, name)
        if not 0 < value < 1:
            raise ConfigError(f"speakers.{name}", f"must be a cosine similarity between 0 "
                              f"and 1 (exclusive), got {value}")
    if not 1 <= c.speakers.max_speakers <= 100:
        raise ConfigError("speakers.max_speakers",
                          f"must be between 1 and 100, got {c.speakers.max_speakers}")
    _positive("audio.silence_seconds", au.silence_seconds)
    if au.silence_dbfs >= 0:
        raise ConfigError("audio.silence_dbfs", f"must be below 0 dBFS, got {au.silence_dbfs}")
    if not 0 < au.clipping_ratio <= 1:
        raise ConfigError("audio.clipping_ratio", f"must be in (0, 1], got {au.clipping_ratio}")
    _positive("audio.warning_interval", au.warning_interval)
    m = c.microphone
    if not m.device:
        raise ConfigError("microphone.device", 'must name a device ("default", a name or '
                          "an index from `edge devices`)")
    if not is_sample_rate(m.sample_rate):
        raise ConfigError("microphone.sample_rate", f"must be between {MIN_SAMPLE_RATE} and "
                          f"{MAX_SAMPLE_RATE}, got {m.sample_rate}")
    if not 10 <= m.chunk_ms <= 1000:
        raise ConfigError("microphone.chunk_ms", f"must be between 10 and 1000, got {m.chunk_ms}")
    for name in ("max_listeners", "listener_queue", "replay_size", "retry_max"):
        _positive(f"microphone.{name}", getattr(m, name))
    for name in ("retention_days", "purge_interval", "room_segment_seconds"):
        _positive(f"journal.{name}", getattr(c.journal, name))
    if c.journal.min_free_mb < 0:
        raise ConfigError("journal.min_free_mb",
                          f"must not be negative (0: no check), got {c.journal.min_free_mb}")
    _positive("journal.failing_seconds", c.journal.failing_seconds)
    rl = c.relay
    _validate_mqtt(c)
    if rl.enabled and rl.transport == "websocket":
        if not rl.url.startswith(("ws://", "wss://")):
            raise ConfigError("relay.url", f"must be a ws:// or wss:// URL, got {rl.url!r}")
        if not (rl.token or rl.token_file):
            raise ConfigError("relay.token_file", "the relay needs credentials: set "
                              "relay.token_file (or EDGE_RELAY_TOKEN)")
        if not c.journal.enabled:
            raise ConfigError("relay.enabled", "the relay sends the journal: set "
                              "journal.enabled = true")
    if rl.token and rl.token_file:
        raise ConfigError("relay.token_file", "set relay.token or relay.token_file, not both")
    for name in ("batch_events", "batch_bytes", "max_backlog_bytes", "ack_timeout",
                 "backoff_max"):
        _positive(f"relay.{name}", getattr(rl, name))
    if c.log.level.lower() not in _LOG_LEVELS:
        raise ConfigError("log.level", f"must be one of {', '.join(_LOG_LEVELS)}")


def _validate_jwks(a: AuthConfig) -> None:
    from edge.core.jwks import ASYMMETRIC, check_url

    if a.jwks_url:
        try:
            check_url(a.jwks_url)
        except ValueError as exc:
            raise ConfigError("auth.jwks_url", str(exc)) from None
    elif a.jwks_cafile:
        raise ConfigError("auth.jwks_cafile", "set auth.jwks_url too (the CA is for its "
                          "TLS certificate)")
    if not a.algorithms:
        raise ConfigError("auth.algorithms", "must name at least one algorithm")
    for name in a.algorithms:
        if name not in ASYMMETRIC:
            raise ConfigError("auth.algorithms", f"{name!r} is not a public-key algorithm "
                              f"this device accepts from a key set (one of "
                              f"{', '.join(ASYMMETRIC)})")
    for name in ("jwks_refresh", "jwks_cooldown", "jwks_timeout"):
        value = getattr(a, name)
        if value < 1:
            raise ConfigError(f"auth.{name}", f"must be at least 1 second, got {value!r}")
    if a.jwks_timeout > 60:
        raise ConfigError("auth.jwks_timeout", f"must be at most 60 seconds, got "
                          f"{a.jwks_timeout!r}")


def _validate_mqtt_client(key: str, m: MqttClientConfig) -> None:
    if not m.url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError(f"{key}.url", f"must be an mqtt:// or mqtts:// URL, got {m.url!r}")
    if m.password and m.password_file:
        raise ConfigError(f"{key}.password_file", "set password or password_file, not both")
    if bool(m.certfile) != bool(m.keyfile):
        raise ConfigError(f"{key}.keyfile", "certfile and keyfile must be set together")
    if not 5 <= m.keepalive <= 65535:
        raise ConfigError(f"{key}.keepalive", f"must be between 5 and 65535, got {m.keepalive}")
    if not 0 <= m.session_expiry <= 0xFFFFFFFF:
        raise ConfigError(f"{key}.session_expiry", "must be between 0 and 4294967295")


def _validate_mqtt(c: Config) -> None:
    from edge.protocols.mqtt_relay import check_template

    rl, m = c.relay, c.relay.mqtt
    if rl.transport not in ("websocket", "mqtt"):
        raise ConfigError("relay.transport", f'must be "websocket" or "mqtt", got '
                          f"{rl.transport!r}")
    for name in ("topic", "receipt_topic"):
        try:
            check_template(getattr(m, name))
        except ValueError as exc:
            raise ConfigError(f"relay.mqtt.{name}", str(exc)) from None
    if m.ack_level not in ("receipt", "broker"):
        raise ConfigError("relay.mqtt.ack_level", f'must be "receipt" or "broker", got '
                          f"{m.ack_level!r}")
    _positive("relay.mqtt.receipt_timeout", m.receipt_timeout)
    if not 1 <= m.max_inflight <= 65535:
        raise ConfigError("relay.mqtt.max_inflight", "must be between 1 and 65535")
    if m.max_message_bytes < 4096:
        raise ConfigError("relay.mqtt.max_message_bytes", "must be at least 4096 bytes")
    if rl.enabled and rl.transport == "mqtt":
        _validate_mqtt_client("relay.mqtt", m)
        if not c.journal.enabled:
            raise ConfigError("relay.enabled", "the relay sends the journal: set "
                              "journal.enabled = true")
    i = c.ingest.mqtt
    if not 1 <= i.max_inflight <= 65535:
        raise ConfigError("ingest.mqtt.max_inflight", "must be between 1 and 65535")
    if i.enabled:
        _validate_mqtt_client("ingest.mqtt", i)
        if not i.subscription or "#" in i.subscription.split("/")[:-1]:
            raise ConfigError("ingest.mqtt.subscription", "must be a topic filter such as "
                              '"$share/edge/edge/v1/+/+/events"')
        if not c.journal.enabled:
            raise ConfigError("ingest.mqtt.enabled", "the ingest stores into the journal: "
                              "set journal.enabled = true")


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
