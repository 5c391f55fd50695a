"""``edge check``: is this device set up right? Answers in words an IT person can act on.

Each check returns a :class:`Finding`; nothing here raises for a bad setup. Blocking
(it loads the model, binds a socket): run it from the command line, not the daemon.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path

from edge.asr.modeldir import check_speaker_model_dir
from edge.asr.vosk import load_speaker_model
from edge.core.config import Config, journal_path, state_dir, voiceprints_path
from edge.core.errors import EdgeError
from edge.core.keys import auth_settings
from edge.core.networks import TrustedNetworks
from edge.core.revocations import RevocationFile
from edge.core.terms import TermFile, TermListError, TermMatcher, builtin_terms
from edge.crypto.rotation import open_key
from edge.ops.check_models import (
    ModelSize,
    board_summary,
    check_memory,
    check_model,
    check_models,
    measured_model,
    memory_limits,
    model_size,
    model_sizes,
)
from edge.ops.findings import FAIL, OK, WARN, Finding
from edge.ops.health import clock_status

__all__ = ["FAIL", "OK", "WARN", "Finding", "ModelSize", "board_summary", "check_memory",
           "check_model", "check_models", "measured_model", "memory_limits", "model_size",
           "model_sizes", "run_checks"]

def run_checks(config: Config, *, load: bool = True) -> list[Finding]:
    """All checks, in the order an operator would fix them."""
    checks: list[Callable[[Config], Finding]] = [
        lambda c: check_speaker_model(c, load=load), check_voiceprints, check_clock,
        check_state_dir, check_tls, check_revocations, check_terms, check_port,
        check_microphone, lambda c: check_memory(c, load=load),
    ]
    return ([check_keys(config), check_data_key(config), *check_models(config, load=load),
             *(check(config) for check in checks), *check_peers(config)])


def check_keys(config: Config) -> Finding:
    try:
        settings = auth_settings(config)
    except EdgeError as exc:
        return Finding(FAIL, "keys", str(exc))
    except ValueError as exc:
        return Finding(FAIL, "keys", f"the configured key is not usable: {exc}")
    if config.auth.jwks_url:
        return check_jwks(config, static=settings.key is not None)
    if config.auth.algorithm == "RS256":
        return Finding(OK, "keys", f"RS256 public key {config.auth.public_key_file}")
    return Finding(OK, "keys", "HS256 secret present")


def check_jwks(config: Config, *, static: bool) -> Finding:
    """Fetch the identity provider's key set once, as the daemon would."""
    from edge.core.jwks import JwksError, KeySet, fetch_document, ssl_context

    a = config.auth
    also = (f"; tokens without a kid: {a.algorithm} "
            f"{'public key' if a.algorithm == 'RS256' else 'secret'}" if static else "")
    try:
        document = fetch_document(a.jwks_url, context=ssl_context(a.jwks_cafile or None),
                                  timeout=a.jwks_timeout)
        keys = KeySet.parse(document, fetched_at=time.time())
    except TimeoutError:
        return Finding(WARN, "keys", f"key set {a.jwks_url}: no answer within "
                       f"{a.jwks_timeout:g}s (the daemon uses the keys it saved last){also}")
    except (JwksError, OSError, ValueError) as exc:
        return Finding(WARN, "keys", f"key set {a.jwks_url}: {exc} (the daemon uses the "
                       f"keys it saved last){also}")
    usable = [k for k in keys.describe() if k["alg"] in a.algorithms]
    level = OK if usable else FAIL
    return Finding(level, "keys", f"key set {a.jwks_url}: {len(keys.keys)} key(s), "
                   f"{len(usable)} for {', '.join(a.algorithms)}{also}")


def check_data_key(config: Config) -> Finding:
    """The key that encrypts the journal and voiceprints: found, unsealed, opens them."""
    from edge.journal.db import JournalError, key_opens

    try:
        key = open_key(config, dev_existing=True)
    except EdgeError as exc:
        return Finding(FAIL, "data key", str(exc))
    where = key.describe()
    if not config.journal.enabled:
        return Finding(OK, "data key", f"{where} (journal off)")
    try:
        opens = key_opens(journal_path(config), key)
    except JournalError as exc:
        return Finding(FAIL, "data key", f"{where}: {exc}")
    if opens is False:
        return Finding(FAIL, "data key", f"{where} does not open the journal "
                       f"{journal_path(config)}: the daemon will not start")
    note = "" if opens else "; no encrypted journal yet (made at the first start)"
    if key.development:
        return Finding(WARN, "data key", f"{where}: a development key on this disk; seal "
                       f"one with `edge keys init --tang URL` for patient data{note}")
    if key.source.kind == "file":
        return Finding(WARN, "data key", f"{where}: the key itself is on this disk; seal "
                       f"it with Clevis (`edge keys init --tang URL`) for patient data{note}")
    return Finding(OK, "data key", f"{where}{note}")


def check_speaker_model(config: Config, *, load: bool = True) -> Finding:
    path = config.recognizer.speaker_model
    if not path:
        return Finding(OK, "speakers", "no speaker model: transcripts carry no speaker "
                       "labels (set recognizer.speaker_model to label them)")
    try:
        check_speaker_model_dir(Path(path))
        if load:
            spk = load_speaker_model(path)
            note = "" if spk.allow_upsample else (
                f"; streams below {spk.sample_rate} Hz get no speaker labels (its "
                "mfcc.conf does not allow upsampling)")
            return Finding(OK, "speakers", f"speaker model {spk.name} loads ({path}){note}")
    except EdgeError as exc:
        return Finding(FAIL, "speakers", f"{exc}; the daemon will not start: install one "
                       "with `edge models install vosk-model-spk-0.4` or fix "
                       "recognizer.speaker_model")
    return Finding(OK, "speakers", f"{path} looks like a speaker model (not loaded)")


def check_voiceprints(config: Config) -> Finding:
    """The enrolled voiceprints (only with a speaker model). Never prints voice data."""
    if not config.recognizer.speaker_model:
        return Finding(OK, "voiceprints", "not used without a speaker model")
    from edge.speakers import VoiceprintStore, VoiceprintStoreError

    try:
        key = open_key(config, dev_existing=True)
    except EdgeError as exc:
        return Finding(WARN, "voiceprints", f"not checked without the data key ({exc})")
    store = VoiceprintStore(voiceprints_path(config), key=key)
    try:
        store.load()
    except VoiceprintStoreError as exc:
        return Finding(WARN, "voiceprints", f"{exc}; the daemon labels speakers without "
                       "enrolled names: move the file aside and enrol again with "
                       "`edge speakers enroll`")
    if not store.path.exists():
        return Finding(OK, "voiceprints", f"none enrolled yet ({store.path})")
    mode = stat.S_IMODE(store.path.stat().st_mode)
    if mode & 0o077:
        return Finding(WARN, "voiceprints", f"{store.path} is readable by others (mode "
                       f"{mode:o}); it holds biometric data: chmod 600")
    return Finding(OK, "voiceprints", f"{len(store)} enrolled speaker(s) in {store.path}")


def check_clock(config: Config) -> Finding:
    clock = clock_status()
    if not clock.sane:
        return Finding(FAIL, "clock", "the system clock is not set; tokens cannot be checked. "
                       "Enable NTP (systemd-timesyncd) and check the network")
    if clock.synchronized is False:
        return Finding(WARN, "clock", "the clock is not NTP-synchronised; token expiry may "
                       "be judged wrongly. Check `timedatectl`")
    return Finding(OK, "clock", "synchronised" if clock.synchronized else "set")


def check_state_dir(config: Config) -> Finding:
    path = state_dir(config)
    if not path.exists():
        return Finding(WARN, "state", f"{path} does not exist yet; the service creates it "
                       "(systemd StateDirectory=edge)")
    if not os.access(path, os.W_OK | os.X_OK):
        return Finding(FAIL, "state", f"{path} is not writable by this user")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Finding(WARN, "state", f"{path} is readable by others (mode {mode:o}); it "
                       "holds patient data: chmod 700")
    from edge.journal.health import free_bytes

    journal_dir = journal_path(config).parent
    minimum = config.journal.min_free_mb * 1024 * 1024
    try:
        free = free_bytes(journal_dir if journal_dir.exists() else path)
    except OSError as exc:
        return Finding(WARN, "state", f"cannot tell the free space of {path}: {exc}")
    if config.journal.enabled and free < minimum:
        return Finding(WARN, "state", f"{path}: only {free // 2**20} MiB free, under "
                       f"journal.min_free_mb ({config.journal.min_free_mb}): the daemon "
                       "reports itself degraded and finals may not be saved; free space")
    return Finding(OK, "state", f"{path} ({free // 2**20} MiB free)")


def check_tls(config: Config) -> Finding:
    s = config.server
    if not s.tls_cert:
        return Finding(WARN if s.host not in ("127.0.0.1", "::1", "localhost") else OK, "tls",
                       "off: audio and transcripts cross the LAN unencrypted; set "
                       "server.tls_cert and server.tls_key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(s.tls_cert,
                                                                            s.tls_key)
    except (OSError, ssl.SSLError) as exc:
        return Finding(FAIL, "tls", f"cannot load {s.tls_cert} / {s.tls_key}: {exc}")
    return Finding(OK, "tls", f"certificate {s.tls_cert}")


def check_revocations(config: Config) -> Finding:
    path = config.auth.revocation_file
    if not path:
        return Finding(OK, "revocation", "no revocation list configured")
    if not Path(path).is_file():
        return Finding(WARN, "revocation", f"{path} does not exist; nothing is revoked")
    entries = RevocationFile(path).current
    return Finding(OK, "revocation",
                   f"{len(entries.jtis)} token(s) and {len(entries.subs)} subject(s) revoked")


def check_terms(config: Config) -> Finding:
    t = config.terms
    if not t.enabled:
        return Finding(OK, "terms", "off (terms.enabled = false)")
    try:
        matcher = TermFile(t.file).current if t.file else TermMatcher(builtin_terms())
    except TermListError as exc:
        return Finding(FAIL, "terms", f"terms.file: {exc}")
    where = t.file or "the starter list shipped with edge"
    return Finding(OK, "terms", f"{len(matcher)} terms ({', '.join(matcher.languages)}) "
                   f"from {where}")


def check_port(config: Config) -> Finding:
    s = config.server
    family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.host, s.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return Finding(WARN, "port", f"{s.host}:{s.port} is in use (is edge already "
                               "running? `systemctl status edge`)")
            return Finding(FAIL, "port", f"cannot bind {s.host}:{s.port}: {exc.strerror}")
    return Finding(OK, "port", f"{s.host}:{s.port} is free")


def check_microphone(config: Config) -> Finding:
    m = config.microphone
    if not m.enabled:
        return Finding(OK, "microphone", "room capture is off; clients stream their own audio")
    from edge.audio.capture import resolve_device

    try:
        device = resolve_device(m.device)
    except EdgeError as exc:
        return Finding(FAIL, "microphone", f"{exc}; see `edge devices` and set "
                       "microphone.device")
    except OSError as exc:
        return Finding(FAIL, "microphone", f"cannot query audio devices: {exc}")
    return Finding(OK, "microphone", f"{device.name} ({device.max_input_channels} channel(s), "
                   f"{round(device.default_sample_rate)} Hz)")


_LOOPBACK_ONLY = ("127.0.0.0/8", "::1/128")


def check_peers(config: Config) -> list[Finding]:
    """The enabled peer protocols without tokens (vosk-server's, Wyoming's): where they
    listen and whom they admit. Their clients cannot authenticate, so the operator's
    ``trusted_networks`` is the only gate; addresses beyond this host are a warning."""
    findings = []
    for name, section, note in (
        ("vosk_server", config.vosk_server, "ws://"),
        ("wyoming", config.wyoming, "tcp://"),
    ):
        if not section.enabled:
            continue
        key = f"{name}.trusted_networks"
        try:
            networks = TrustedNetworks(key, section.trusted_networks).networks
        except EdgeError as exc:
            findings.append(Finding(FAIL, name, str(exc)))
            continue
        where = f"{note}{section.host or '*'}:{section.port}"
        tokens = (" and any address whose client adds ?token=<jwt> to its URL"
                  if name == "vosk_server" else "")
        if not networks:
            level = OK if tokens else WARN
            who = (f"no address without a token ({key} is empty){tokens}" if tokens else
                   f"nobody: {key} is empty and the protocol carries no token")
            findings.append(Finding(level, name, f"{where} admits {who}"))
            continue
        listed = ", ".join(map(str, networks))
        if all(str(n) in _LOOPBACK_ONLY for n in networks):
            findings.append(Finding(OK, name, f"{where} admits only this host ({listed}, "
                                    f"{key}) without a token{tokens}"))
            continue
        findings.append(Finding(WARN, name, f"{where} admits {listed} ({key}) without a "
                                f"token{tokens}; anyone on those networks can stream audio "
                                "and read its transcript, unencrypted: list only the "
                                "machines that need it"))
    return findings
