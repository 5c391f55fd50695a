"""Vosk, behind the small blocking :class:`~edge.asr.recognizer.Recognizer` interface.
The only module that imports vosk.

Everything here blocks (model loading takes seconds, decoding takes real CPU): callers
on the event loop go through ``trio.to_thread.run_sync`` with a ``CapacityLimiter``.
One :class:`LoadedModel` is shared by every session; each session owns one
:class:`VoskRecognizer` and never uses it from two threads at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vosk

from edge.asr.modeldir import (
    check_model_dir,
    check_speaker_model_dir,
    conf_rate,
    default_model_path,
    model_name,
    model_rate,
    read_conf,
)
from edge.asr.nonspeech import speech_text, words_only
from edge.asr.recognizer import Recognizer
from edge.core.errors import RecognizerError
from edge.protocols.events import Utterance, Word

logger = logging.getLogger(__name__)

# Vosk detects at most one endpoint per AcceptWaveform call, so long client chunks are
# fed in slices short enough to keep utterances apart.
_SLICE_MS = 200



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
    # Adds the listed terms to finals (edge.core.terms.TermAnnotator), in the
    # recogniser's worker thread.
    terms: Callable[[Utterance], Utterance] | None = field(default=None, repr=False)

    def recognizer(self, sample_rate: int, phrases: Sequence[str] | None = None) -> Recognizer:
        """A new recogniser for one stream (blocking: compiles a grammar if given).

        With a speaker model, its finals carry speaker vectors (``speaker_vector``).
        """
        return VoskRecognizer(self, sample_rate, phrases)

    def with_speaker_model(self, speaker_model: SpeakerModel | None) -> LoadedModel:
        return dataclasses.replace(self, speaker_model=speaker_model)

    def with_terms(self, terms: Callable[[Utterance], Utterance] | None) -> LoadedModel:
        return dataclasses.replace(self, terms=terms)


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
                       sample_rate=model_rate(model_path))


def load_speaker_model(path: str | Path) -> SpeakerModel:
    """Load a Vosk speaker-vector model (blocking). Raises :class:`RecognizerError`
    with one line saying what is wrong with the directory."""
    model_path = Path(path)
    check_speaker_model_dir(model_path)
    vosk.SetLogLevel(-1)
    try:
        options = read_conf(model_path / "mfcc.conf")
        spk = vosk.SpkModel(str(model_path))
    except OSError as exc:
        raise RecognizerError(f"cannot read the speaker model in {model_path}: "
                              f"{exc.strerror or exc}") from exc
    except Exception as exc:  # vosk: a bare Exception("Failed to create a speaker model")
        raise RecognizerError(f"cannot load the speaker model in {model_path}: the files are "
                              "damaged or not a Vosk speaker model") from exc
    return SpeakerModel(model=spk, path=model_path, name=model_path.name,
                        sample_rate=conf_rate(options),
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
        self._terms = model.terms
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

    @property
    def at_boundary(self) -> bool:
        """Nothing fed since the last final: the recogniser holds no speech of the
        stream (between utterances), so the stream may go on in another one."""
        return self._samples == self._utterance_start

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
        ended = True  # the last slice ended an utterance: no partial to give
        for i in range(0, len(pcm), self._slice):
            piece = pcm[i:i + self._slice]
            self._samples += len(piece) // 2
            ended = self._rec.AcceptWaveform(piece)
            if ended:
                final = self._final(self._rec.Result())
                if final is not None:
                    out.append(final)
        # One partial, of the last slice (a traceback of the whole utterance so far:
        # asking after every slice would cost as much and be superseded at once).
        if pcm and not ended:
            utterance = self._partial(self._rec.PartialResult())
            if utterance is not None:
                out.append(utterance)
        return out

    def flush(self) -> Utterance | None:
        return self._final(self._rec.FinalResult())

    def _ms(self, samples: int) -> int:
        return round(1000 * samples / self.sample_rate)

    def _final(self, raw: str) -> Utterance | None:
        start, self._utterance_start = self._utterance_start, self._samples
        final = final_from_json(raw, fallback_start_ms=self._ms(start),
                                fallback_end_ms=self._ms(self._samples),
                                offset_ms=self._ms(self._base) if self._base else 0)
        if final is not None and self._terms is not None:
            final = self._terms(final)
        return final

    def _partial(self, raw: str) -> Utterance | None:
        data = json.loads(raw)
        text = speech_text(data.get("partial", ""))
        if not text:
            return None
        return Utterance(is_final=False, text=text, start_ms=self._ms(self._utterance_start),
                         end_ms=self._ms(self._samples))


def final_from_json(raw: str, *, fallback_start_ms: int, fallback_end_ms: int,
                    offset_ms: int = 0) -> Utterance | None:
    """Convert a Vosk final result; ``None`` for an endpoint with no words (non-speech
    tokens are not words: :mod:`edge.asr.nonspeech`).

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
    return words_only(Utterance(
        is_final=True,
        text=text,
        start_ms=words[0].start_ms if words else fallback_start_ms,
        end_ms=words[-1].end_ms if words else fallback_end_ms,
        words=words,
        speaker_vector=vector,
    ))


def _words(items: list[dict[str, Any]], offset_ms: int = 0) -> tuple[Word, ...]:
    return tuple(
        Word(word=str(w["word"]), start_ms=max(0, round(1000 * float(w["start"])) - offset_ms),
             end_ms=max(0, round(1000 * float(w["end"])) - offset_ms),
             confidence=float(w.get("conf", 1.0)))
        for w in items
    )



