"""The checks a loaded :class:`~edge.core.config.Config` must pass, one function per
section (pure).

:func:`validate` runs :data:`CHECKS` in order and stops at the first mistake, a
:class:`~edge.core.errors.ConfigError` naming the dotted key. A new key with a rule
gets its line in its section's function; a new section gets a function and a row.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING

from edge.core.errors import ConfigError
from edge.core.languages import is_language_tag, normal_tag, primary_language
from edge.core.model_table import installed_models
from edge.core.mqtt_topics import check_template
from edge.core.rates import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, is_sample_rate

if TYPE_CHECKING:
    from edge.core.config import Config, MqttClientConfig

MAX_ENDPOINT_SILENCE_MS = 60_000
LOG_LEVELS = ("debug", "info", "warning", "error")


def validate(c: Config) -> None:
    """Raise ConfigError for the first key in ``c`` that breaks a rule."""
    for check in CHECKS:
        check(c)


def positive(key: str, value: float) -> None:
    """ConfigError naming ``key`` unless ``value`` > 0."""
    if value <= 0:
        raise ConfigError(key, f"must be greater than 0, got {value!r}")


def not_negative(key: str, value: float, hint: str = "") -> None:
    """ConfigError naming ``key`` if ``value`` < 0 (``hint``: what 0 means)."""
    if value < 0:
        raise ConfigError(key, f"must not be negative{hint}, got {value}")


def sample_rate(key: str, value: int) -> None:
    """ConfigError naming ``key`` unless ``value`` is a sample rate the daemon accepts."""
    if not is_sample_rate(value):
        raise ConfigError(key, f"must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE}, "
                          f"got {value}")


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


# --- the peers' own ports and languages --------------------------------------------------

def check_peers(c: Config) -> None:
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
    positive("assemblyai.max_token_seconds", c.assemblyai.max_token_seconds)
    _check_wyoming_language(c.wyoming.language)
    _check_scriptix_language(c.scriptix.language)


def _check_scriptix_language(language: str) -> None:
    code = primary_language(language)
    if language and not (code.isascii() and code.isalpha() and 2 <= len(code) <= 3):
        raise ConfigError("scriptix.language", f"must be a language code such as \"ko\" "
                          f"or empty (from the model's name), got {language!r}")


def _check_wyoming_language(language: str) -> None:
    parts = language.split("-")
    if language and not (
            parts[0].isascii() and parts[0].isalpha() and 2 <= len(parts[0]) <= 3
            and all(p.isascii() and p.isalnum() and 1 <= len(p) <= 8 for p in parts[1:])):
        raise ConfigError("wyoming.language", f"must be a language tag such as \"ko\" or "
                          f"\"en-US\", or empty (from the model's name), got {language!r}")


# --- the sections of the daemon itself ---------------------------------------------------

def check_server(c: Config) -> None:
    s = c.server
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
        positive(f"server.{name}", getattr(s, name))
    if s.max_frame_bytes < 4096:
        raise ConfigError("server.max_frame_bytes", "must be at least 4096 bytes")


def check_auth(c: Config) -> None:
    a = c.auth
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
    check_jwks(c)
    not_negative("auth.leeway", a.leeway)
    positive("auth.max_token_lifetime", a.max_token_lifetime)
    not_negative("auth.expiry_warning", a.expiry_warning)


def check_jwks(c: Config) -> None:
    from edge.core.jwks import ASYMMETRIC, check_url

    a = c.auth
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


def check_recognizer(c: Config) -> None:
    r = c.recognizer
    sample_rate("recognizer.sample_rate", r.sample_rate)
    for name in ("threads", "warm_recognizers", "memory_budget_mb", "recognizer_memory_mb"):
        not_negative(f"recognizer.{name}", getattr(r, name))
    if not 0 <= r.endpoint_silence_ms <= MAX_ENDPOINT_SILENCE_MS:
        raise ConfigError("recognizer.endpoint_silence_ms",
                          f"must be between 0 (off) and {MAX_ENDPOINT_SILENCE_MS}, got "
                          f"{r.endpoint_silence_ms}")
    positive("recognizer.lag_warning", r.lag_warning)
    positive("recognizer.max_phrases", r.max_phrases)
    check_models(r.model, r.models, r.language)


def check_models(model: str, models: dict[str, str], language: str) -> None:
    """``[recognizer.models]``: language tags to non-empty names, no tag twice, and
    ``recognizer.language`` among them; ``recognizer.model`` is the one-model form."""
    if models and model:
        raise ConfigError("recognizer.model", "set either recognizer.model (one model) or "
                          "[recognizer.models] (one a language), not both")
    seen: dict[str, str] = {}
    for tag, source in models.items():
        key = f"recognizer.models.{tag}"
        if not is_language_tag(tag):
            raise ConfigError(key, f"must be a language tag such as ko or en-US, got {tag!r}")
        if not source.strip():
            raise ConfigError(key, "must name a model directory or package, got \"\"")
        if normal_tag(tag) in seen:
            raise ConfigError(key, f"the same language as recognizer.models."
                              f"{seen[normal_tag(tag)]}")
        seen[normal_tag(tag)] = tag
    if language and not is_language_tag(language):
        raise ConfigError("recognizer.language", f"must be a language tag such as ko or "
                          f"en-US, or empty, got {language!r}")
    if language and models and normal_tag(language) not in seen:
        raise ConfigError("recognizer.language", f"{language!r} has no model in "
                          f"[recognizer.models] (installed: {', '.join(models)})")


def check_speakers(c: Config) -> None:
    for name in ("diarization_threshold", "identification_threshold"):
        value = getattr(c.speakers, name)
        if not 0 < value < 1:
            raise ConfigError(f"speakers.{name}", f"must be a cosine similarity between 0 "
                              f"and 1 (exclusive), got {value}")
    if not 1 <= c.speakers.max_speakers <= 100:
        raise ConfigError("speakers.max_speakers",
                          f"must be between 1 and 100, got {c.speakers.max_speakers}")


def check_audio(c: Config) -> None:
    au = c.audio
    positive("audio.silence_seconds", au.silence_seconds)
    if au.silence_dbfs >= 0:
        raise ConfigError("audio.silence_dbfs", f"must be below 0 dBFS, got {au.silence_dbfs}")
    if not 0 < au.clipping_ratio <= 1:
        raise ConfigError("audio.clipping_ratio", f"must be in (0, 1], got {au.clipping_ratio}")
    positive("audio.warning_interval", au.warning_interval)


def check_microphone(c: Config) -> None:
    m = c.microphone
    if not m.device:
        raise ConfigError("microphone.device", 'must name a device ("default", a name or '
                          "an index from `edge devices`)")
    sample_rate("microphone.sample_rate", m.sample_rate)
    if not 10 <= m.chunk_ms <= 1000:
        raise ConfigError("microphone.chunk_ms", f"must be between 10 and 1000, got {m.chunk_ms}")
    for name in ("max_listeners", "listener_queue", "replay_size", "retry_max"):
        positive(f"microphone.{name}", getattr(m, name))
    installed = installed_models(c)
    if m.language and installed.choose(m.language) is None:
        raise ConfigError("microphone.language", f"{m.language!r} has no model (installed: "
                          f"{', '.join(installed.languages)}; see [recognizer.models])")


def check_journal(c: Config) -> None:
    for name in ("retention_days", "purge_interval", "room_segment_seconds"):
        positive(f"journal.{name}", getattr(c.journal, name))
    not_negative("journal.min_free_mb", c.journal.min_free_mb, " (0: no check)")
    positive("journal.failing_seconds", c.journal.failing_seconds)


def check_audit(c: Config) -> None:
    positive("audit.retention_days", c.audit.retention_days)


# --- the relay and the ingest ------------------------------------------------------------

def check_relay_mqtt(c: Config) -> None:
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
    positive("relay.mqtt.receipt_timeout", m.receipt_timeout)
    if not 1 <= m.max_inflight <= 65535:
        raise ConfigError("relay.mqtt.max_inflight", "must be between 1 and 65535")
    if m.max_message_bytes < 4096:
        raise ConfigError("relay.mqtt.max_message_bytes", "must be at least 4096 bytes")
    if rl.enabled and rl.transport == "mqtt":
        _check_mqtt_client("relay.mqtt", m)
        if not c.journal.enabled:
            raise ConfigError("relay.enabled", "the relay sends the journal: set "
                              "journal.enabled = true")


def check_ingest_mqtt(c: Config) -> None:
    i = c.ingest.mqtt
    if not 1 <= i.max_inflight <= 65535:
        raise ConfigError("ingest.mqtt.max_inflight", "must be between 1 and 65535")
    if i.enabled:
        _check_mqtt_client("ingest.mqtt", i)
        if not i.subscription or "#" in i.subscription.split("/")[:-1]:
            raise ConfigError("ingest.mqtt.subscription", "must be a topic filter such as "
                              '"$share/edge/edge/v1/+/+/events"')
        if not c.journal.enabled:
            raise ConfigError("ingest.mqtt.enabled", "the ingest stores into the journal: "
                              "set journal.enabled = true")


def _check_mqtt_client(key: str, m: MqttClientConfig) -> None:
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


def check_relay(c: Config) -> None:
    rl = c.relay
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
        positive(f"relay.{name}", getattr(rl, name))


def check_log(c: Config) -> None:
    if c.log.level.lower() not in LOG_LEVELS:
        raise ConfigError("log.level", f"must be one of {', '.join(LOG_LEVELS)}")


#: Run in this order; the first mistake found is the one reported.
CHECKS: tuple[Callable[[Config], None], ...] = (
    check_peers,
    check_server,
    check_auth,
    check_recognizer,
    check_speakers,
    check_audio,
    check_microphone,
    check_journal,
    check_audit,
    check_relay_mqtt,
    check_ingest_mqtt,
    check_relay,
    check_log,
)
