"""Enrolled voiceprints: named speakers in an encrypted JSON file, and matching vectors
against them.

Blocking file I/O (reads, and durable writes through :func:`edge.core.fs.atomic_write`)
with numpy for the arithmetic; no trio, no vosk. The file is sealed with AES-256-GCM
under the ``voiceprints`` subkey of the device's data key (:mod:`edge.crypto.sealed`);
a plaintext store (an edge from before encryption) is read, and replaced by a sealed
one with :func:`encrypt_plaintext_store` (the daemon does it at start).
:class:`VoiceprintStore` keeps the voiceprints; the file is parsed strictly, so that a
damaged file is an error and never silently an empty store.

Speaker vectors are biometric data: nothing here logs them or puts them in a repr or an
error message.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edge.core.errors import EdgeError
from edge.core.fs import atomic_write, fsync_dir, shred
from edge.crypto.datakey import DataKey
from edge.crypto.sealed import MAGIC, SealedError, is_sealed, open_sealed, seal
from edge.speakers.diarize import Vector, as_unit_vector, unit_vector

logger = logging.getLogger(__name__)

# Higher than the diarizer's: a wrong name on a transcript is worse than "Speaker N".
DEFAULT_IDENTIFY_THRESHOLD = 0.7
MAX_NAME_CHARS = 200
STORE_VERSION = 1
PURPOSE = "voiceprints"  # the data key's subkey for this file
_PLAINTEXT_SUFFIX = ".plaintext"  # a plaintext store while its sealed copy goes in


class VoiceprintStoreError(EdgeError):
    """The voiceprint file cannot be read, is damaged, or cannot be written."""


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

    def __init__(self, path: str | Path, *, key: DataKey,
                 threshold: float = DEFAULT_IDENTIFY_THRESHOLD,
                 clock: Callable[[], float] = time.time) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold must be between -1 and 1")
        self.path = Path(path)
        self._key = key
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
        an empty store: enrolling into it would destroy the voiceprints it holds; so is
        a file that does not open with the key.
        """
        _recover_plaintext(self.path)
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
        self._prints = _parse_store(_plaintext(self._key, raw, self.path), self.path)
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
            self._signature = _signature(
                _replace(self.path, seal(self._key, PURPOSE, data + b"\n")))
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
            u = as_unit_vector(v)
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
        mean = unit_vector(np.mean(units, axis=0))
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
        unit = as_unit_vector(vector)
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
        unit = unit_vector(np.asarray(values, dtype=np.float64))
        if unit is None:
            raise bad(f"{where}: vector is zero or not finite")
        prints[name] = Voiceprint(name=name, role=role, vector=unit, count=count,
                                  created=created)
    return prints


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _plaintext(key: DataKey, raw: bytes, path: Path) -> bytes:
    if not is_sealed(raw):
        return raw  # a store from before encryption: encrypt_plaintext_store seals it
    try:
        return open_sealed(key, PURPOSE, raw)
    except SealedError as exc:
        raise VoiceprintStoreError(f"voiceprint file {path} cannot be read with the "
                                   f"{key.describe()}: {exc}") from None


def _replace(path: Path, data: bytes) -> os.stat_result:
    """Write ``data`` over the store; a plaintext store is overwritten and removed only
    once the new file is in place (a crash in between leaves one or the other)."""
    try:
        with path.open("rb") as f:
            plaintext = not is_sealed(f.read(len(MAGIC)))
    except FileNotFoundError:
        plaintext = False
    if not plaintext:
        return atomic_write(path, data, mode=0o600)
    aside = path.with_name(path.name + _PLAINTEXT_SUFFIX)
    os.replace(path, aside)
    st = atomic_write(path, data, mode=0o600)
    shred(aside)
    return st


def _recover_plaintext(path: Path) -> None:
    """Finish or undo a sealing of a plaintext store that a crash interrupted."""
    aside = path.with_name(path.name + _PLAINTEXT_SUFFIX)
    if not aside.exists():
        return
    try:
        if path.exists():
            shred(aside)  # the sealed store is in place
        else:
            os.replace(aside, path)
            fsync_dir(path.parent)
    except OSError as exc:
        raise VoiceprintStoreError(f"cannot finish encrypting {path}: "
                                   f"{exc.strerror or exc}") from exc


def encrypt_plaintext_store(path: str | Path, key: DataKey) -> bool:
    """Seal a plaintext voiceprint store in place (the plaintext file overwritten and
    removed); False when there is nothing to do. Blocking. Raises
    :class:`VoiceprintStoreError` when it cannot read or write the file."""
    path = Path(path)
    _recover_plaintext(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise VoiceprintStoreError(f"cannot read voiceprints from {path}: "
                                   f"{exc.strerror or exc}") from exc
    if is_sealed(raw):
        return False
    # Sealed as it is, even damaged: its bytes are kept (encrypted) for whoever repairs
    # it, and the store reports the damage when it reads the sealed file.
    try:
        _replace(path, seal(key, PURPOSE, raw))
    except OSError as exc:
        raise VoiceprintStoreError(f"cannot encrypt {path}: {exc.strerror or exc}") from exc
    logger.warning("voiceprint file %s was not encrypted: encrypted it in place with the "
                   "%s, and overwrote and removed the plaintext file", path, key.describe())
    return True
