"""``/healthz`` and ``/metrics``: the device's state at a glance, no patient data.

Pure rendering of server state (no trio, no vosk) plus one blocking system query,
:func:`clock_status`. Neither endpoint needs a token: they carry counts, states and
versions only, never transcript text, tokens or subjects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge.core.backoff import CIRCUIT_OPEN_AFTER
from edge.core.jwks import KeyStore
from edge.core.stats import Histogram, Stats

#: A wall clock before this is certainly wrong (a Pi without RTC boots in 1970 or at
#: the last shutdown): tokens cannot be checked, so the device reports itself degraded.
EARLIEST_SANE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


@dataclass(frozen=True)
class ClockStatus:
    synchronized: bool | None  # None: the kernel could not be asked
    sane: bool


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (Linux): we only read ``status``; the rest is
    # room for the kernel to write into.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("_rest", ctypes.c_byte * 256)]


def clock_status(now: float | None = None) -> ClockStatus:
    """Whether the kernel's clock is NTP-synchronised (adjtimex), and plausible."""
    now = time.time() if now is None else now
    synchronized: bool | None = None
    try:
        libc = _libc()
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
        if state >= 0:
            synchronized = state != _TIME_ERROR and not timex.status & _STA_UNSYNC
    except (OSError, AttributeError):
        synchronized = None
    return ClockStatus(synchronized=synchronized, sane=now >= EARLIEST_SANE_TIME)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def models_part(models: Sequence[Mapping[str, Any]] | None, notes: list[str]
                ) -> dict[str, Any]:
    """``/healthz``'s ``models``: every installed model (edge.asr.models'
    ``ModelRegistry.status``), one a language; a failed load is a note."""
    if models is None:
        return {}
    notes.extend(f"the model for {m['language']} cannot be loaded: {m['error']}"
                 for m in models if m.get("error"))
    return {"models": [dict(m) for m in models]}


def health(
    *, version: str, model: str, sessions: int, max_sessions: int, clock: ClockStatus,
    microphone: Mapping[str, Any] | None = None, relay: Mapping[str, Any] | None = None,
    services: Mapping[str, Mapping[str, Any]] | None = None, stopping: bool = False,
    recognizers: Mapping[str, Any] | None = None, ingest: Mapping[str, Any] | None = None,
    journal: Mapping[str, Any] | None = None, min_free_bytes: int = 0,
    memory: Mapping[str, Any] | None = None,
    jwks: Mapping[str, Any] | None = None,
    audit: Mapping[str, Any] | None = None,
    models: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[int, dict[str, Any]]:
    """The ``/healthz`` status code and body: 200 serving, 503 degraded (with reasons)
    or stopping.

    Only what stops transcription itself, or the keeping of its record, is a problem
    (503): a background service that is restarting is a note, since client sessions go
    on without it; a journal that cannot save finals (``journal["state"] ==
    "failing"``, see :mod:`edge.journal.health`) or whose filesystem has fewer than
    ``min_free_bytes`` free (0: no check) is a problem, since clients still get
    captions the device no longer keeps. ``journal``: ``JournalService.status()``, or
    None when the journal is off.
    """
    problems = []
    notes = []
    if stopping:
        problems.append("the daemon is stopping; new sessions are refused")
    if not clock.sane:
        problems.append("the system clock is not set (tokens cannot be checked); "
                        "check NTP / time-sync")
    elif clock.synchronized is False:
        notes.append("the system clock is not NTP-synchronised")
    problems.extend(journal_problems(journal, min_free_bytes))
    body: dict[str, Any] = {
        "status": "ok",  # set below, once every part has had its say
        "version": version,
        "model": model,
        "sessions": sessions,
        "max_sessions": max_sessions,
        "clock": {"synchronized": clock.synchronized, "sane": clock.sane},
        "microphone": dict(microphone) if microphone else {"state": "not_configured"},
        "relay": dict(relay) if relay else {"state": "not_configured", "backlog": 0},
        "services": {name: dict(state) for name, state in (services or {}).items()},
    }
    if recognizers is not None:
        # The pool: state (off, waiting, warming, warm), warm (idle) and target.
        body["recognizers"] = dict(recognizers)
    body.update(models_part(models, notes))
    if ingest is not None:
        body["ingest"] = dict(ingest)  # the MQTT ingest (edge.relay.mqtt_ingest)
    body["journal"] = ({**journal, "min_free_bytes": min_free_bytes,
                        "low_space": low_space(journal, min_free_bytes)}
                       if journal is not None else {"state": "not_configured"})
    if audit is not None:
        # The audit trail (edge.journal.auditor.Auditor.status): a store that fails is a
        # note, not a 503: sessions go on, and the failure is counted.
        body["audit"] = dict(audit)
        if audit.get("last_error"):
            notes.append(f"the audit trail cannot be stored ({audit['last_error']}); "
                         f"{audit.get('errors')} failed write(s) since start")
    if memory is not None:
        # The recognisers' memory budget (edge.asr.memory.Snapshot.status()).
        body["memory"] = dict(memory)
        if not memory.get("held", True):
            problems.append(over_budget(memory))
    if jwks is not None:
        # The identity provider's key set (edge.core.jwks.KeyStore.status).
        body["auth"] = {"jwks": dict(jwks)}
        if not jwks.get("keys"):
            problems.append("no signing keys from the identity provider yet (auth.jwks_url): "
                            "its tokens are refused")
        elif jwks.get("last_error"):
            notes.append("the identity provider's key set cannot be fetched; the keys last "
                         "fetched stay in force")
    notes.extend(background_notes(services, relay, ingest))
    body["status"] = "stopping" if stopping else "degraded" if problems else "ok"
    if problems:
        body["reasons"] = problems
    if notes:
        body["notes"] = notes
    return (503 if problems else 200), body


def background_notes(services: Mapping[str, Mapping[str, Any]] | None,
                     relay: Mapping[str, Any] | None,
                     ingest: Mapping[str, Any] | None) -> list[str]:
    """What the background services report that is not a problem for transcription:
    a service restarting, the relay's upstream unreachable or events set aside, the
    MQTT ingest's broker unreachable."""
    notes = []
    for name, state in (services or {}).items():
        if state.get("state") == "restarting":
            notes.append(f"the {name} service failed and is being restarted")
    if relay and relay.get("circuit_open"):
        notes.append("the relay cannot reach its upstream; transcripts are kept locally "
                     "and sent when it is back")
    if relay and relay.get("set_aside"):
        notes.append(f"the relay set aside {relay['set_aside']} event(s) "
                     f"({relay.get('set_aside_reason')}); see 'edge relay set-aside'")
    if ingest and ingest.get("failures", 0) >= CIRCUIT_OPEN_AFTER:
        notes.append("the MQTT ingest cannot reach its broker")
    return notes


def over_budget(memory: Mapping[str, Any]) -> str:
    """The problem of recognisers over their memory budget that cannot be recycled."""
    return (f"the recognisers hold {memory['recognizer_bytes'] // 2**20} MB, over their "
            f"budget of {memory['budget_bytes'] // 2**20} MB "
            "(recognizer.memory_budget_mb), and cannot be recycled; new sessions are "
            "refused")


def journal_problems(journal: Mapping[str, Any] | None, min_free_bytes: int) -> list[str]:
    """Why the journal makes the device degraded, one line per cause (none if it does
    not): finals are not being saved, and/or its filesystem is nearly full."""
    if journal is None:
        return []
    out = []
    if journal.get("state") == "failing":
        out.append(f"the journal cannot save finals ({journal.get('last_error')}; "
                   f"{journal.get('failures')} failed write(s) since start): clients still "
                   "get their captions, the device keeps no copy")
    if low_space(journal, min_free_bytes):
        out.append(f"the journal's filesystem has {_mib(journal['free_bytes'])} MiB free, under "
                   f"journal.min_free_mb ({_mib(min_free_bytes)} MiB): free space before "
                   "finals are lost")
    return out


def low_space(journal: Mapping[str, Any], min_free_bytes: int) -> bool:
    """Whether the journal's filesystem has less than ``min_free_bytes`` free (False
    when unchecked: ``min_free_bytes`` 0, or the free space could not be read)."""
    free = journal.get("free_bytes")
    return bool(min_free_bytes) and free is not None and free < min_free_bytes


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f}".removesuffix(".0")


@dataclass(frozen=True)
class MetricsState:
    """What :func:`render_metrics` was given, for the families in :data:`METRICS` to read."""

    stats: Stats
    version: str
    model: str
    sessions_current: int
    max_sessions: int
    clock: ClockStatus
    microphone_state: str
    relay_backlog: int
    listeners: int
    relay_circuit_open: bool
    relay_shed: int
    recognizers: Mapping[str, Any] | None
    service_restarts: Mapping[str, int] | None
    relay_set_aside: int
    ingest: Mapping[str, Any] | None
    journal: Mapping[str, Any] | None
    min_free_bytes: int
    memory: Mapping[str, Any] | None
    jwks: KeyStore | None
    audit_records: Mapping[str, int] | None


def render_metrics(
    stats: Stats, *, version: str, model: str, sessions_current: int, max_sessions: int,
    clock: ClockStatus, microphone_state: str = "not_configured", relay_backlog: int = 0,
    listeners: int = 0, relay_circuit_open: bool = False, relay_shed: int = 0,
    recognizers: Mapping[str, Any] | None = None,
    service_restarts: Mapping[str, int] | None = None,
    relay_set_aside: int = 0, ingest: Mapping[str, Any] | None = None,
    journal: Mapping[str, Any] | None = None, min_free_bytes: int = 0,
    memory: Mapping[str, Any] | None = None,
    jwks: KeyStore | None = None,
    audit_records: Mapping[str, int] | None = None,
) -> str:
    """Prometheus text exposition format 0.0.4: every family of :data:`METRICS` whose
    part is present, in the table's order.

    ``recognizers``: the recogniser pool's status (``RecognizerPool.status()``), if pooled.
    ``journal``: ``JournalService.status()``, if the journal is on.
    """
    state = MetricsState(**locals())  # the arguments, by name
    out: list[str] = []
    for part, families in METRICS:
        if part is not None and getattr(state, part) is None:
            continue  # that part of the daemon is off
        for family in families:
            read = family.read(state)
            if read is not None:
                out.extend(family.exposition(read))
    return "\n".join(out) + "\n"


Samples = list[tuple[Mapping[str, str], float]]


@dataclass(frozen=True)
class Family:
    """A metric family. ``read`` takes the :class:`MetricsState` and returns the
    family's samples (a Histogram for a histogram), or None to leave it out."""

    name: str
    kind: str
    help: str
    read: Callable[[Any], Samples | Histogram | None]

    def exposition(self, read: Samples | Histogram) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        if isinstance(read, Histogram):
            lines += [f'{self.name}_bucket{{le="{le}"}} {count}'
                      for le, count in read.cumulative()]
            lines += [f"{self.name}_sum {_number(read.total)}",
                      f"{self.name}_count {read.count}"]
        else:
            lines += [f"{self.name}{_labels(labels)} {_number(value)}"
                      for labels, value in read]
        return lines


def metric(name: str, kind: str, help_: str,
           read: Callable[[Any], Samples | None]) -> Family:
    """A gauge or counter family (one row of :data:`METRICS`)."""
    return Family(name, kind, help_, read)


def histogram(name: str, help_: str, read: Callable[[Any], Histogram]) -> Family:
    """A histogram family (one row of :data:`METRICS`)."""
    return Family(name, "histogram", help_, read)


def _one(value: float) -> Samples:
    return [({}, value)]


def _by(label: str, counts: Mapping[str, float]) -> Samples:
    return [({label: k}, v) for k, v in sorted(counts.items())]


#: Every metric family, in the order of the exposition, grouped by the optional part
#: of :class:`MetricsState` they need: a group is left out while its part is None
#: (that part of the daemon is off); None: always present.
METRICS: tuple[tuple[str | None, tuple[Family, ...]], ...] = (
    (None, (
        metric("edge_build_info", "gauge", "Version and model of this daemon.",
               lambda s: [({"version": s.version, "model": s.model}, 1)]),
        metric("edge_sessions", "gauge", "Sessions open now.",
               lambda s: _one(s.sessions_current)),
        metric("edge_sessions_max", "gauge", "Configured session capacity.",
               lambda s: _one(s.max_sessions)),
        metric("edge_sessions_total", "counter",
               "Sessions accepted since start, by dialect (wire protocol).",
               lambda s: _by("dialect", s.stats.sessions_by_dialect)),
        metric("edge_sessions_refused_total", "counter", "Handshakes refused, by reason.",
               lambda s: _by("reason", s.stats.refused)),
        metric("edge_sessions_closed_total", "counter", "Sessions ended, by reason.",
               lambda s: _by("reason", s.stats.closes)),
        metric("edge_audio_seconds_total", "counter", "Seconds of audio decoded.",
               lambda s: _one(s.stats.audio_seconds)),
        metric("edge_decode_seconds_total", "counter",
               "Seconds spent in the recogniser (wall time in worker threads).",
               lambda s: _one(s.stats.decode_seconds)),
        metric("edge_real_time_factor", "gauge",
               "Decode seconds per audio second since start (lower is faster).",
               lambda s: _one(s.stats.real_time_factor or 0.0)),
    )),
    ("recognizers", (
        metric("edge_recognizers_total", "counter",
               "Recognisers handed to streams without a grammar: fresh, reused warm, or "
               "taken while being warmed at start.",
               lambda s: [({"kind": "fresh"}, s.recognizers["fresh"]),
                          ({"kind": "warm"}, s.recognizers["reused"]),
                          ({"kind": "warming"}, s.recognizers["taken_warming"])]),
        metric("edge_recognizers_idle", "gauge", "Warm recognisers waiting for a stream.",
               lambda s: _one(s.recognizers["warm"])),
        metric("edge_recognizers_target", "gauge",
               "Warm recognisers the start-up warm-up aims for (0: no warm-up).",
               lambda s: _one(s.recognizers["target"])),
        metric("edge_recognizers_warmed_total", "counter",
               "Recognisers warmed by the start-up warm-up.",
               lambda s: _one(s.recognizers["warmed"])),
        metric("edge_recognizers_warming", "gauge",
               "1 while the start-up warm-up is warming a recogniser.",
               lambda s: _one(1 if s.recognizers["state"] == "warming" else 0)),
    )),
    ("memory", (
        metric("edge_process_resident_bytes", "gauge",
               "Resident memory of the daemon (VmRSS).",
               lambda s: _one(s.memory["rss_bytes"])),
        metric("edge_model_resident_bytes", "gauge",
               "Resident memory after the model was loaded, before any recogniser.",
               lambda s: _one(s.memory["model_bytes"])),
        metric("edge_recognizer_memory_bytes", "gauge",
               "Resident memory above the model's share: the recognisers' (estimated).",
               lambda s: _one(s.memory["recognizer_bytes"])),
        metric("edge_recognizer_memory_budget_bytes", "gauge",
               "recognizer.memory_budget_mb, in bytes.",
               lambda s: _one(s.memory["budget_bytes"])),
        metric("edge_recognizers_live", "gauge",
               "Recognisers held now (streams' and idle pooled).",
               lambda s: _one(s.memory["recognizers"])),
        metric("edge_recognizer_recycled_total", "counter",
               "Recognisers let go for memory, by reason: idle (a pooled one dropped), "
               "live (a stream's replaced between utterances), gap (a stream's replaced "
               "at a short gap between words, at the budget), forced (over the budget "
               "with no gap, at its quietest 10 ms), retired (after its hours of audio).",
               lambda s: [({"reason": k}, s.memory["recycled"].get(k, 0))
                          for k in ("idle", "live", "gap", "forced", "retired")]),
    )),
    (None, (
        metric("edge_transcriptions_total", "counter", "Transcription results, by kind.",
               lambda s: [({"kind": "partial"}, s.stats.partials),
                          ({"kind": "final"}, s.stats.finals)]),
        metric("edge_warnings_total", "counter", "Warnings sent to clients, by code.",
               lambda s: _by("code", s.stats.warnings)),
        histogram("edge_partial_latency_seconds",
                  "From the arrival of audio to the partial it produced.",
                  lambda s: s.stats.partial_latency),
        histogram("edge_final_latency_seconds",
                  "From the arrival of an utterance's last audio to its final.",
                  lambda s: s.stats.final_latency),
        metric("edge_microphone_state", "gauge",
               "Room microphone state (1 for the current one).",
               lambda s: [({"state": s.microphone_state}, 1)]),
        metric("edge_room_listeners", "gauge", "Clients listening to the room stream.",
               lambda s: _one(s.listeners)),
        metric("edge_relay_backlog_events", "gauge",
               "Journal events waiting for the upstream.", lambda s: _one(s.relay_backlog)),
        metric("edge_relay_circuit_open", "gauge",
               "1 while the relay has failed to reach its upstream several times in a row.",
               lambda s: _one(1 if s.relay_circuit_open else 0)),
        metric("edge_relay_shed_events_total", "counter",
               "Events left out of the relay because the outbox was full (kept locally).",
               lambda s: _one(s.relay_shed)),
        metric("edge_relay_set_aside_total", "counter",
               "Events set aside from the relay (refused by the consumer, or too large to "
               "send; kept locally, re-queued by 'edge relay requeue').",
               lambda s: _one(s.relay_set_aside)),
    )),
    ("ingest", (
        metric("edge_ingest_mqtt_connected", "gauge",
               "1 while the MQTT ingest is subscribed and consuming.",
               lambda s: _one(1 if s.ingest["connected"] else 0)),
        metric("edge_ingest_mqtt_messages_total", "counter",
               "Events messages received by the MQTT ingest.",
               lambda s: _one(s.ingest["messages"])),
        metric("edge_ingest_mqtt_events_total", "counter",
               "Events the MQTT ingest handled: stored (new), duplicate, refused.",
               lambda s: [({"result": "stored"}, s.ingest["stored"]),
                          ({"result": "duplicate"}, s.ingest["duplicates"]),
                          ({"result": "refused"}, s.ingest["refused"])]),
        metric("edge_ingest_mqtt_gaps_total", "counter",
               "Messages not stored because an earlier one of the device was missing.",
               lambda s: _one(s.ingest["gaps"])),
        metric("edge_ingest_mqtt_dropped_total", "counter",
               "Messages dropped unanswered (unreadable, naming no event keys).",
               lambda s: _one(s.ingest["dropped"])),
        metric("edge_ingest_mqtt_failures", "gauge",
               "Consecutive failures to reach the broker (0 when consuming).",
               lambda s: _one(s.ingest["failures"])),
    )),
    ("journal", (
        metric("edge_journal_write_failures_total", "counter",
               "Journal writes of a session's start, final or end that failed since start "
               "(the client got the final; the device kept no copy).",
               lambda s: _one(s.journal["failures"])),
        metric("edge_journal_failing", "gauge",
               "1 while the journal is failing: a write failed and none has gone through "
               "since, or one failed within journal.failing_seconds.",
               lambda s: _one(1 if s.journal["state"] == "failing" else 0)),
        metric("edge_journal_free_bytes", "gauge",
               "Bytes free on the journal's filesystem (statvfs f_bavail * f_frsize).",
               lambda s: None if s.journal.get("free_bytes") is None
               else _one(s.journal["free_bytes"])),
        metric("edge_journal_min_free_bytes", "gauge",
               "journal.min_free_mb in bytes (0: no check); /healthz is degraded below it.",
               lambda s: _one(s.min_free_bytes)),
        metric("edge_journal_encrypted", "gauge", "1 when the journal is encrypted at rest.",
               lambda s: _one(1 if s.journal.get("encrypted") else 0)),
    )),
    ("jwks", (
        metric("edge_auth_jwks_fetch_total", "counter",
               "Fetches of the identity provider's key set (auth.jwks_url), by result: "
               "ok, error (unreachable, HTTP, TLS), invalid (not a usable key set), "
               "timeout.",
               lambda s: _by("result", s.jwks.fetches)),
        metric("edge_auth_jwks_keys", "gauge",
               "Keys in the identity provider's key set in force.",
               lambda s: _one(len(s.jwks.current.keys) if s.jwks.current else 0)),
    )),
    ("audit_records", (
        metric("edge_audit_records_total", "counter",
               "Audit records written since start, by action (Auditor.by_action).",
               lambda s: _by("action", s.audit_records)),
    )),
    ("service_restarts", (
        metric("edge_service_restarts_total", "counter",
               "Background services restarted after a failure, by service.",
               lambda s: _by("service", s.service_restarts)),
    )),
    (None, (
        metric("edge_clock_synchronized", "gauge",
               "1 when the kernel clock is NTP-synchronised.",
               lambda s: _one(1 if s.clock.synchronized else 0)),
    )),
)


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))
