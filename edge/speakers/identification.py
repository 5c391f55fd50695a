"""Speaker labels from speaker vectors: who is talking, within a session and by name.

Pure: numpy and the standard library only (no trio, no vosk). Vosk gives a speaker
vector with a final result when the utterance has at least 50 frames (0.5 s) of speech;
this module turns those vectors into labels.

- :class:`Diarizer` clusters one session's vectors online into "Speaker 1",
  "Speaker 2", ... in order of first appearance.
- :class:`VoiceprintStore` keeps enrolled, named voiceprints in a JSON file.
- :class:`SpeakerLabeler` puts both together for one session: an enrolled name when a
  voiceprint matches, the session's "Speaker N" otherwise.
- :class:`SpeakerIdentification` is the daemon's side: the settings, the store (reloaded
  when another process changes it, names switched off while it is damaged) and
  enrolment; :class:`SpeakerTrack` is one stream's labels (a session, a room segment).

Similarities are cosines. What counts as "the same voice" depends on the speaker model,
so the thresholds are settings; the defaults suit the test model built by
:mod:`tools.spkmodel` and are a starting point for vosk-model-spk-0.4, not a calibration.

Speaker vectors are biometric data: nothing here logs them or puts them in a repr or an
error message.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edge.core.errors import EdgeError

logger = logging.getLogger(__name__)

DEFAULT_DIARIZE_THRESHOLD = 0.55
# Higher than the diarizer's: a wrong name on a transcript is worse than "Speaker N".
DEFAULT_IDENTIFY_THRESHOLD = 0.7
DEFAULT_MAX_SPEAKERS = 8
DEFAULT_MIN_NEW_SPEAKER_MS = 1000
MAX_NAME_CHARS = 200
STORE_VERSION = 1

Vector = np.ndarray | Sequence[float]


class VoiceprintStoreError(EdgeError):
    """The voiceprint file cannot be read, is damaged, or cannot be written."""


@dataclass(frozen=True)
class SpeakerDecision:
    """Who said an utterance, in the shape of the protocol's ``speaker`` fields.

    All ``None`` when there was nothing to decide on (no speaker vector).
    ``confidence`` is in [0, 1].
    """

    label: str | None = None
    speaker_id: str | None = None
    confidence: float | None = None
    role: str | None = None


NO_DECISION = SpeakerDecision()


def cosine(a: Vector, b: Vector) -> float:
    """Cosine similarity in [-1, 1]; 0.0 when either vector has no direction.

    A zero vector, or one with NaN or infinite entries, has no direction. Vectors of
    different lengths raise ``ValueError``.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"vectors of different dimensions ({x.size} and {y.size})")
    ux, uy = _unit(x), _unit(y)
    if ux is None or uy is None:
        return 0.0
    return float(np.clip(ux @ uy, -1.0, 1.0))


def _unit(v: np.ndarray) -> np.ndarray | None:
    """``v`` scaled to length 1, or None if it has no direction."""
    if v.size == 0 or not np.all(np.isfinite(v)):
        return None
    norm = float(np.linalg.norm(v))
    if norm == 0.0 or not math.isfinite(norm):
        return None
    return v / norm


def _as_unit(vector: Vector | None) -> np.ndarray | None:
    if vector is None:
        return None
    return _unit(np.asarray(vector, dtype=np.float64).ravel())


def _confidence(x: float) -> float:
    return round(min(1.0, max(0.0, x)), 4)


# --- diarization within a session ---------------------------------------------------------

@dataclass
class _Cluster:
    number: int
    total: np.ndarray = field(repr=False)  # sum of the members' unit vectors
    count: int = 1

    @property
    def label(self) -> str:
        return f"Speaker {self.number}"

    @property
    def speaker_id(self) -> str:
        return f"session:{self.number}"

    def centroid(self) -> np.ndarray:
        # The running mean of unit vectors; its direction is all cosine needs.
        c = _unit(self.total)
        return self.total if c is None else c


class Diarizer:
    """Online clustering of one session's speaker vectors.

    Each utterance's vector is compared (cosine) with the centroid of every speaker
    seen so far, the running mean of their unit vectors:

    - best similarity >= ``threshold``: that speaker; the centroid takes the vector in;
      confidence = the similarity.
    - below: a new speaker, "Speaker N+1"; confidence = 1 - the best similarity
      (1.0 for the session's first speaker). Except when ``max_speakers`` are already
      known, or the utterance is shorter than ``min_new_speaker_ms`` (short utterances
      give noisy vectors): then the nearest speaker, confidence = the similarity, which
      is below the threshold and so below that of any ordinary match; such forced
      assignments leave the centroid alone.
    - no vector (Vosk gives none under 50 frames of speech), or a zero or non-finite
      one: no label, ``SpeakerDecision()``. Guessing the previous speaker would be
      wrong exactly when short answers happen, at a change of speaker.

    Labels are stable for the session: a speaker's number never changes. Not
    thread-safe; one session uses it from one task.
    """

    def __init__(self, *, threshold: float = DEFAULT_DIARIZE_THRESHOLD,
                 max_speakers: int = DEFAULT_MAX_SPEAKERS,
                 min_new_speaker_ms: int = DEFAULT_MIN_NEW_SPEAKER_MS) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold must be between -1 and 1")
        if max_speakers < 1:
            raise ValueError("max_speakers must be at least 1")
        self.threshold = threshold
        self.max_speakers = max_speakers
        self.min_new_speaker_ms = min_new_speaker_ms
        self._clusters: list[_Cluster] = []
        self._dim: int | None = None
        self._counts = {"matched": 0, "new": 0, "forced": 0, "no_vector": 0}

    @property
    def speakers(self) -> list[str]:
        """Labels in order of first appearance."""
        return [c.label for c in self._clusters]

    def assign(self, vector: Vector | None, *, duration_ms: int) -> SpeakerDecision:
        """Label one utterance. ``duration_ms`` is the utterance's length.

        Raises ``ValueError`` for a vector whose dimension differs from the session's
        earlier ones (the speaker model cannot change within a session).
        """
        unit = _as_unit(vector)
        if unit is None:
            self._counts["no_vector"] += 1
            return NO_DECISION
        if self._dim is None:
            self._dim = unit.size
        elif unit.size != self._dim:
            raise ValueError(f"speaker vector has {unit.size} dimensions, "
                             f"the session's have {self._dim}")
        if not self._clusters:
            return self._open(unit, best=None)
        sims = [float(c.centroid() @ unit) for c in self._clusters]
        best = int(np.argmax(sims))
        cluster = self._clusters[best]
        if sims[best] >= self.threshold:
            cluster.total = cluster.total + unit
            cluster.count += 1
            self._counts["matched"] += 1
            return SpeakerDecision(cluster.label, cluster.speaker_id, _confidence(sims[best]))
        if len(self._clusters) < self.max_speakers and duration_ms >= self.min_new_speaker_ms:
            return self._open(unit, best=sims[best])
        self._counts["forced"] += 1
        return SpeakerDecision(cluster.label, cluster.speaker_id, _confidence(sims[best]))

    def _open(self, unit: np.ndarray, *, best: float | None) -> SpeakerDecision:
        cluster = _Cluster(number=len(self._clusters) + 1, total=unit.copy())
        self._clusters.append(cluster)
        self._counts["new"] += 1
        confidence = 1.0 if best is None else 1.0 - max(0.0, best)
        return SpeakerDecision(cluster.label, cluster.speaker_id, _confidence(confidence))

    def reset(self) -> None:
        """Forget every speaker (a new session)."""
        self._clusters.clear()
        self._dim = None

    def statistics(self) -> dict[str, int]:
        return {"speakers": len(self._clusters), **self._counts}


# --- enrolled voiceprints -----------------------------------------------------------------

@dataclass(frozen=True)
class Voiceprint:
    """An enrolled speaker: the mean direction of their enrolment vectors."""

    name: str
    role: str | None
    vector: np.ndarray = field(repr=False, compare=False)
    count: int  # enrolment utterances averaged
    created: str  # ISO 8601, UTC


class Match(NamedTuple):
    name: str
    role: str | None
    score: float


class VoiceprintStore:
    """Named voiceprints in a JSON file, for identifying enrolled speakers.

    The file is written whole on every change, atomically (a temporary file in the same
    directory, fsync, rename) and with mode 0600. A missing file is an empty store.
    ``load``, ``changed``, ``enroll`` and ``remove`` do blocking file I/O; ``identify``
    and ``list`` only read memory. Changes never alter the voiceprints in place, they
    swap in a new set: ``identify`` may run in other threads while one thread loads,
    enrols or removes. Two changes at once are not safe (:class:`SpeakerIdentification`
    serialises them).

    All voiceprints in a store have one dimension, the speaker model's. After a change
    of speaker model, ``identify`` matches nobody (and warns once) until the old
    voiceprints are removed and the speakers enrolled again.
    """

    def __init__(self, path: str | Path, *, threshold: float = DEFAULT_IDENTIFY_THRESHOLD,
                 clock: Callable[[], float] = time.time) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold must be between -1 and 1")
        self.path = Path(path)
        self.threshold = threshold
        self._clock = clock
        self._prints: dict[str, Voiceprint] = {}
        self._warned_dim = False
        self._signature: tuple[int, int, int] | None = None  # of the file last read or written

    def __len__(self) -> int:
        return len(self._prints)

    @property
    def dim(self) -> int | None:
        """The voiceprints' dimension, None while the store is empty."""
        for p in self._prints.values():
            return int(p.vector.size)
        return None

    def list(self) -> builtins.list[Voiceprint]:
        """The voiceprints, by name."""
        return [self._prints[n] for n in sorted(self._prints)]

    def get(self, name: str) -> Voiceprint | None:
        return self._prints.get(name)

    # -- file ---------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file (blocking). Raises :class:`VoiceprintStoreError`.

        A missing file gives an empty store. A damaged one is an error, never silently
        an empty store: enrolling into it would destroy the voiceprints it holds.
        """
        try:
            with self.path.open("rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            self._prints = {}
            self._signature = None
            return
        except OSError as exc:
            raise VoiceprintStoreError(
                f"cannot read voiceprints from {self.path}: {exc.strerror or exc}") from exc
        mode = st.st_mode
        if mode & 0o077:
            logger.warning("voiceprint file %s is accessible to other users (mode %03o); "
                           "it should be 0600", self.path, mode & 0o777)
        # Taken before parsing: a damaged file is not read again until it changes.
        self._signature = _signature(st)
        self._prints = _parse_store(raw, self.path)
        self._warned_dim = False

    def changed(self) -> bool:
        """Whether the file differs from the one last read or written (blocking: a stat).

        Every write replaces the file (a new inode), so another process's enrolment is
        seen even within the same second.
        """
        try:
            current: tuple[int, int, int] | None = _signature(self.path.stat())
        except FileNotFoundError:
            current = None
        except OSError:
            return True  # let load() report it
        return current != self._signature

    def _save(self, prints: dict[str, Voiceprint]) -> None:
        dims = {p.vector.size for p in prints.values()}
        body = {
            "version": STORE_VERSION,
            "dim": dims.pop() if dims else None,
            "voiceprints": [
                {"name": p.name, "role": p.role, "count": p.count, "created": p.created,
                 "vector": [float(x) for x in p.vector]}
                for p in (prints[n] for n in sorted(prints))
            ],
        }
        data = json.dumps(body, ensure_ascii=False, allow_nan=False, indent=1).encode()
        try:
            self._signature = _signature(_write_atomic(self.path, data + b"\n"))
        except OSError as exc:
            raise VoiceprintStoreError(
                f"cannot write voiceprints to {self.path}: {exc.strerror or exc}") from exc

    # -- changes ------------------------------------------------------------------------

    def enroll(self, name: str, role: str | None, vectors: Iterable[Vector]) -> Voiceprint:
        """Enrol ``name`` from one or more speaker vectors, replacing any earlier
        voiceprint of that name, and save (blocking).

        Raises ``ValueError`` for a bad name or role, no usable vectors, or vectors
        whose dimension differs from the store's; :class:`VoiceprintStoreError` when
        the file cannot be written (the store is then unchanged).
        """
        name = check_name(name)
        if role is not None and (not isinstance(role, str) or len(role) > MAX_NAME_CHARS):
            raise ValueError(f"role must be a string of at most {MAX_NAME_CHARS} characters")
        units = []
        for v in vectors:
            u = _as_unit(v)
            if u is None:
                raise ValueError("an enrolment vector is zero, empty or not finite")
            units.append(u)
        if not units:
            raise ValueError("enrolment needs at least one speaker vector")
        if len({u.size for u in units}) != 1:
            raise ValueError("enrolment vectors have different dimensions")
        others = {n: p for n, p in self._prints.items() if n != name}
        dim = next(iter({p.vector.size for p in others.values()}), None)
        if dim is not None and units[0].size != dim:
            raise ValueError(f"the vectors have {units[0].size} dimensions but the store's "
                             f"voiceprints have {dim}: the speaker model has changed; "
                             "remove the old voiceprints first")
        mean = _unit(np.mean(units, axis=0))
        if mean is None:
            raise ValueError("enrolment vectors cancel out (they point in opposite directions)")
        voiceprint = Voiceprint(name=name, role=role, vector=mean, count=len(units),
                                created=_iso(self._clock()))
        self._save({**others, name: voiceprint})
        self._prints = {**others, name: voiceprint}
        self._warned_dim = False
        return voiceprint

    def remove(self, name: str) -> bool:
        """Forget ``name`` and save (blocking); False if there was no such voiceprint."""
        if name not in self._prints:
            return False
        rest = {n: p for n, p in self._prints.items() if n != name}
        self._save(rest)
        self._prints = rest
        return True

    # -- matching -----------------------------------------------------------------------

    def identify(self, vector: Vector | None) -> Match | None:
        """The enrolled speaker most similar to ``vector``, if at least ``threshold``."""
        unit = _as_unit(vector)
        if unit is None or not self._prints:
            return None
        if unit.size != self.dim:
            if not self._warned_dim:
                logger.warning("voiceprints in %s have %s dimensions but speaker vectors "
                               "have %d: nobody will be identified until the speakers "
                               "are enrolled again", self.path, self.dim, unit.size)
                self._warned_dim = True
            return None
        best: Match | None = None
        for p in self._prints.values():
            score = float(np.clip(p.vector @ unit, -1.0, 1.0))
            if best is None or score > best.score:
                best = Match(p.name, p.role, score)
        if best is None or best.score < self.threshold:
            return None
        return best


def check_name(name: Any) -> str:
    """``name`` stripped, or ``ValueError`` if it cannot name a voiceprint."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a voiceprint needs a non-empty name")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS or any(ord(ch) < 32 for ch in name):
        raise ValueError(f"a name has at most {MAX_NAME_CHARS} characters and no "
                         "control characters")
    return name


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a number")


def _parse_store(raw: bytes, path: Path) -> dict[str, Voiceprint]:
    def bad(message: str) -> VoiceprintStoreError:
        return VoiceprintStoreError(f"voiceprint file {path} is damaged: {message}")

    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad("not valid JSON") from exc
    if not isinstance(data, dict) or data.get("version") != STORE_VERSION:
        raise bad(f"expected a JSON object with \"version\": {STORE_VERSION}")
    entries = data.get("voiceprints")
    if not isinstance(entries, list):
        raise bad('"voiceprints" must be a list')
    dim = data.get("dim")
    if entries and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise bad('"dim" must be a positive integer')
    prints: dict[str, Voiceprint] = {}
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise bad(f"voiceprint {i} is not an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise bad(f"voiceprint {i} has no name")
        where = f"voiceprint {i} ({name[:40]!r})"
        if name in prints:
            raise bad(f"{where} appears twice")
        role = entry.get("role")
        if role is not None and not isinstance(role, str):
            raise bad(f"{where}: role must be a string or null")
        count = entry.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise bad(f"{where}: count must be a positive integer")
        created = entry.get("created")
        if not isinstance(created, str):
            raise bad(f"{where}: created must be a string")
        values = entry.get("vector")
        if (not isinstance(values, list)
                or not all(isinstance(x, int | float) and not isinstance(x, bool)
                           for x in values)):
            raise bad(f"{where}: vector must be a list of numbers")
        if len(values) != dim:
            raise bad(f"{where}: vector has {len(values)} numbers, expected {dim}")
        unit = _unit(np.asarray(values, dtype=np.float64))
        if unit is None:
            raise bad(f"{where}: vector is zero or not finite")
        prints[name] = Voiceprint(name=name, role=role, vector=unit, count=count,
                                  created=created)
    return prints


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _write_atomic(path: Path, data: bytes) -> os.stat_result:
    """Replace ``path`` with ``data``: readers see the old file or the new, never half.

    The new file is created with mode 0600 (and chmod-ed so, whatever the umask),
    fsync-ed, renamed over the old one, and the directory fsync-ed so that the rename
    survives a power cut. Returns the new file's stat.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            st = os.fstat(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return st


# --- both together ------------------------------------------------------------------------

class SpeakerLabeler:
    """Labels for one session: enrolled names first, the session's speakers otherwise.

    A vector that matches a voiceprint (``store.identify``) gives the enrolled name and
    role, ``speaker_id`` ``"enrolled:<name>"`` and the match score as confidence; such
    utterances do not enter the diarizer, so "Speaker N" numbers count unknown voices
    only. Any other vector goes to the session's :class:`Diarizer`.
    """

    def __init__(self, diarizer: Diarizer | None = None,
                 store: VoiceprintStore | None = None) -> None:
        self.diarizer = diarizer if diarizer is not None else Diarizer()
        self.store = store
        self._identified = 0

    def label(self, vector: Vector | None, *, duration_ms: int) -> SpeakerDecision:
        if self.store is not None and len(self.store):
            match = self.store.identify(vector)
            if match is not None:
                self._identified += 1
                return SpeakerDecision(label=match.name, speaker_id=f"enrolled:{match.name}",
                                       confidence=_confidence(match.score), role=match.role)
        return self.diarizer.assign(vector, duration_ms=duration_ms)

    def statistics(self) -> dict[str, int]:
        return {"identified": self._identified, **self.diarizer.statistics()}


# --- the daemon's view ----------------------------------------------------------------------

NO_SPEAKER_MODEL = "no speaker model configured"


@dataclass(frozen=True)
class SpeakerStatus:
    """What sessions are told in ``session_init``.

    ``enabled``: finals carry speaker labels. ``names``: enrolled voiceprints are in use.
    ``reason``: why either is off, in words for a client (no paths, no names).
    """

    enabled: bool
    names: bool
    reason: str | None = None
    enrolled: int = 0


UNAVAILABLE = SpeakerStatus(enabled=False, names=False, reason=NO_SPEAKER_MODEL)


class SpeakerIdentification:
    """Speaker labelling for the daemon: the settings and the voiceprint store.

    One per daemon, shared by every session and the room; it exists only when a speaker
    model is loaded. :meth:`refresh`, :meth:`enroll` and :meth:`remove` do blocking
    file I/O and hold a lock, so worker threads may call them at once; labelers read
    the store without it (see :class:`VoiceprintStore`).

    The file may change under the daemon (``edge speakers enroll`` / ``remove`` from
    another process): :meth:`refresh` reloads it when it has. A damaged file switches
    names off, with the reason logged (once per version of the file) and reported in
    :attr:`status`; diarization goes on.
    """

    def __init__(self, store: VoiceprintStore, *,
                 diarization_threshold: float = DEFAULT_DIARIZE_THRESHOLD,
                 max_speakers: int = DEFAULT_MAX_SPEAKERS) -> None:
        Diarizer(threshold=diarization_threshold, max_speakers=max_speakers)  # validates
        self.store = store
        self.diarization_threshold = diarization_threshold
        self.max_speakers = max_speakers
        self._lock = threading.Lock()
        self._loaded = False
        self._error: str | None = None

    @property
    def status(self) -> SpeakerStatus:
        """As of the last :meth:`refresh` (or change)."""
        if self._error is not None:
            return SpeakerStatus(enabled=True, names=False, reason=(
                "the voiceprint store is damaged: enrolled speakers are not named until an "
                "administrator repairs it; speakers are told apart as Speaker 1, 2, ..."))
        return SpeakerStatus(enabled=True, names=True, enrolled=len(self.store))

    @property
    def error(self) -> str | None:
        """Why the store could not be read (for logs and ``edge check``), or None."""
        return self._error

    def refresh(self) -> SpeakerStatus:
        """Reload the voiceprints if their file changed (blocking: a stat, or a read)."""
        with self._lock:
            self._refresh_locked()
        return self.status

    def _refresh_locked(self) -> None:
        if self._loaded and not self.store.changed():
            return
        self._loaded = True
        try:
            self.store.load()
        except VoiceprintStoreError as exc:
            self._error = str(exc)
            logger.error("%s; enrolled speakers will not be named until it is repaired "
                         "or removed (diarization goes on)", exc)
            return
        if self._error is not None:
            logger.info("voiceprints in %s are readable again", self.store.path)
        self._error = None

    def labeler(self) -> SpeakerLabeler:
        """A labeler for one stream: a fresh diarizer, and the store unless damaged."""
        store = self.store if self._error is None else None
        return SpeakerLabeler(Diarizer(threshold=self.diarization_threshold,
                                       max_speakers=self.max_speakers), store)

    def track(self) -> SpeakerTrack:
        return SpeakerTrack(self)

    def enroll(self, name: str, role: str | None, vectors: Iterable[Vector]) -> Voiceprint:
        """Enrol ``name`` (blocking; see :meth:`VoiceprintStore.enroll`).

        Refuses (:class:`VoiceprintStoreError`) while the file is damaged: writing would
        replace the voiceprints it still holds. Creates the store's directory (0700).
        """
        with self._lock:
            self._refresh_locked()
            if self._error is not None:
                raise VoiceprintStoreError(
                    f"{self._error}; not enrolling, so that the voiceprints it holds are "
                    "not overwritten: repair or remove the file first")
            try:
                self.store.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise VoiceprintStoreError(f"cannot create {self.store.path.parent}: "
                                           f"{exc.strerror or exc}") from exc
            return self.store.enroll(name, role, vectors)

    def remove(self, name: str) -> bool:
        """Forget ``name`` (blocking); False if not enrolled. Refuses on a damaged file."""
        with self._lock:
            self._refresh_locked()
            if self._error is not None:
                raise VoiceprintStoreError(self._error)
            return self.store.remove(name)


class SpeakerTrack:
    """Speaker labels for one stream: a client session, or a segment of the room's.

    :meth:`label` runs where the speaker vectors come from, in the recogniser's worker
    thread; the first label of a stream refreshes the store (a stat). :meth:`reset`
    starts a new stream ("Speaker 1" again); call it only while no :meth:`label` call
    is running (the owner awaits each recogniser call before anything else).
    """

    def __init__(self, identification: SpeakerIdentification) -> None:
        self._identification = identification
        self._labeler: SpeakerLabeler | None = None

    def label(self, vector: Vector | None, *, duration_ms: int) -> SpeakerDecision:
        if self._labeler is None:
            self._identification.refresh()
            self._labeler = self._identification.labeler()
        return self._labeler.label(vector, duration_ms=duration_ms)

    def reset(self) -> None:
        self._labeler = None

    def statistics(self) -> dict[str, int]:
        return self._labeler.statistics() if self._labeler is not None else {}
