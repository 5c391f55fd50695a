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
from dataclasses import dataclass
from pathlib import Path

from edge.asr.memory import mem_total, read_rss
from edge.asr.modeldir import (
    check_model_dir,
    check_speaker_model_dir,
    default_model_path,
    model_path,
)
from edge.asr.models import estimate_bytes
from edge.asr.vosk import LoadedModel, load_model, load_speaker_model
from edge.core.config import Config, journal_path, state_dir, voiceprints_path
from edge.core.errors import EdgeError
from edge.core.keys import auth_settings
from edge.core.model_table import installed_models
from edge.core.networks import TrustedNetworks
from edge.core.revocations import RevocationFile
from edge.core.terms import TermFile, TermListError, TermMatcher, builtin_terms
from edge.crypto.rotation import open_key
from edge.ops import memory
from edge.ops.health import clock_status

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Finding:
    level: str  # OK, WARN or FAIL
    topic: str
    message: str

    def line(self) -> str:
        return f"{self.level:<4} {self.topic}: {self.message}"


def run_checks(config: Config, *, load: bool = True) -> list[Finding]:
    """All checks, in the order an operator would fix them."""
    checks: list[Callable[[Config], Finding]] = [
        lambda c: check_speaker_model(c, load=load), check_voiceprints, check_clock,
        check_state_dir, check_tls, check_revocations, check_terms, check_port,
        check_microphone, lambda c: check_memory(c, load=load),
    ]
    return ([check_keys(config), check_data_key(config), *check_models(config, load=load),
             *(check(config) for check in checks), *check_peers(config)])


def check_models(config: Config, *, load: bool = True) -> list[Finding]:
    """The one model (:func:`check_model`), or each of ``[recognizer.models]``: the
    default one loaded as the daemon loads it at start, the others (loaded on first use)
    checked on disk, with the memory they are taken to need before they load."""
    r = config.recognizer
    if not r.models:
        return [check_model(config, load=load)]
    table = installed_models(config)
    findings = []
    for language, source in table.models.items():
        topic = f"model {language}"
        try:
            path = model_path(source)
            check_model_dir(path)
            if load and language == table.default:
                model, share = measured_model(path)
                findings.append(Finding(OK, topic, f"{model.name} loads ({path}; "
                                        f"{share // memory.MB} MB resident; the default)"))
                continue
            guess = estimate_bytes(source) // memory.MB
        except EdgeError as exc:
            findings.append(Finding(FAIL, topic, f"{exc}; fix recognizer.models.{language}"))
            continue
        fits = "" if guess <= r.memory_budget_mb else (
            f"; more than recognizer.memory_budget_mb ({r.memory_budget_mb} MB): its "
            "sessions will be refused")
        findings.append(Finding(OK if not fits else WARN, topic,
                                f"{path} looks like a Vosk model (loads on first use, "
                                f"about {guess} MB){fits}"))
    return findings


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


def check_model(config: Config, *, load: bool = True) -> Finding:
    try:
        path = Path(config.recognizer.model) if config.recognizer.model else default_model_path()
        check_model_dir(path)
        if load:
            model, share = measured_model(path)
            return Finding(OK, "model", f"{model.name} loads ({path}; "
                           f"{share // memory.MB} MB resident)")
    except EdgeError as exc:
        return Finding(FAIL, "model", f"{exc}; install one with `edge models install` or "
                       "fix recognizer.model")
    return Finding(OK, "model", f"{path} looks like a Vosk model (not loaded)")


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


#: The installed unit, whose MemoryHigh/MemoryMax ``edge check`` compares (systemd/install.sh).
UNIT_FILE = Path("/etc/systemd/system/edge.service")

_measured: dict[Path, tuple[LoadedModel, int]] = {}


def measured_model(path: Path) -> tuple[LoadedModel, int]:
    """The model loaded once per ``edge check`` (blocking), and its resident share in
    bytes (this process's RSS after the load, less before)."""
    if path not in _measured:
        before = read_rss()
        model = load_model(path)
        _measured[path] = model, max(0, read_rss() - before)
    return _measured[path]


def memory_limits(config: Config, *, load: bool = True) -> tuple[memory.Limits, str]:
    """The unit's limits for ``config``, from the model's measured share when it loads
    (else the small Korean model's), and where that figure came from."""
    path = Path(config.recognizer.model) if config.recognizer.model else default_model_path()
    share = 0
    if load:
        try:
            check_model_dir(path)
            share = measured_model(path)[1] // memory.MB
        except EdgeError:
            share = 0
    source = f"measured {share} MB" if share else f"assumed {memory.MODEL_MB} MB"
    return (memory.limits(config.recognizer.memory_budget_mb,
                          model_mb=share or memory.MODEL_MB), source)


def board_summary(model_mb: int = memory.MODEL_MB) -> str:
    """What 2, 4 and 8 GB boards hold: the largest budget, and recognisers at
    ``recognizer_memory_mb`` = 90 below its high-water mark (room and sessions, or
    warm)."""
    parts = []
    for gb in memory.BOARDS_GB:
        budget = memory.largest_budget(memory.board_mem_total_mb(gb), model_mb=model_mb)
        parts.append(f"{gb} GB: budget <= {budget} MB "
                     f"({memory.recognizers_held(budget)} recognisers)")
    return "; ".join(parts)


def check_memory(config: Config, *, load: bool = True, unit_file: Path = UNIT_FILE,
                 total: int | None = None) -> Finding:
    """Whether the daemon's limits (model + ``recognizer.memory_budget_mb``) fit this
    board's RAM (``total`` bytes: MemTotal), and the installed unit's ``MemoryMax=``
    holds them."""
    limit, source = memory_limits(config, load=load)
    total_mb = (mem_total() if total is None else total) // memory.MB
    budget = config.recognizer.memory_budget_mb
    model_mb = limit.expected_mb - budget - memory.RUNTIME_MB
    what = (f"model {source} + recognizer.memory_budget_mb {budget} MB: "
            f"MemoryHigh={limit.high_mb}M MemoryMax={limit.max_mb}M")
    boards = board_summary(model_mb)
    if total_mb and not memory.fits(limit, total_mb):
        largest = memory.largest_budget(total_mb, model_mb=model_mb)
        return Finding(FAIL, "memory", f"{what} do not fit this board's {total_mb} MB "
                       f"(MemTotal, {memory.SYSTEM_MB} MB kept for the system): set "
                       f"recognizer.memory_budget_mb to {largest} or less ({boards})")
    installed = _unit_memory_max(unit_file)
    if installed is not None and installed < limit.max_mb:
        return Finding(WARN, "memory", f"{what}, but {unit_file} has MemoryMax="
                       f"{installed}M: run systemd/install.sh again to update it")
    fit = f" fit this board's {total_mb} MB" if total_mb else ""
    return Finding(OK, "memory", f"{what}{fit} ({boards})")


def _unit_memory_max(unit_file: Path) -> int | None:
    try:
        text = unit_file.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemoryMax=") and line.endswith("M"):
            try:
                return int(line.removeprefix("MemoryMax=").removesuffix("M"))
            except ValueError:
                return None
    return None
