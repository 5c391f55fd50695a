"""Speaker identification: how right the labels are, and what speaker vectors cost.

On the generated multi-voice fixtures (tests/fixtures/speakers: three espeak-ng voices
that are not among the speaker model's training speakers), decoded by the Korean model
through the daemon's own code path (``LoadedModel.recognizer`` wrapped in a
``LabelingRecognizer`` with a ``SpeakerTrack``, 100 ms chunks, the conversation's word
list as the grammar, as the tests do):

* **diarization accuracy**: share of the conversation's finals whose label is right
  after the best one-to-one mapping of labels to voices (a final without a label
  counts as wrong), for the three-voice conversation and its two-voice cut (kim and
  park only);
* **identification**: two voices (kim, park) enrolled from their two clips each, as
  ``edge speakers enroll`` does; the share of their finals in the conversation labelled
  with the right name, and the share of the unenrolled voice's utterances (its
  finals in the conversation and its clips) given no name (**rejection rate**), with
  the similarity scores on either side of ``speakers.identification_threshold``;
* **cost**: the same audio decoded with and without the speaker model, interleaved in
  the same run, CPU time of the decoding thread (Vosk's work is native code in that
  thread); **ratio** = with / without, per grammar and free dictation. Plus the
  labeler's own time per final (numpy, in the same worker-thread call).

Prints a table and writes bench/results/speakers.json.

    .venv/bin/python bench/speakers.py                  # ~2 min
    .venv/bin/python bench/speakers.py --quick          # grammar only, 2 rounds
    .venv/bin/python bench/speakers.py --speaker-model DIR --diarization-threshold 0.5

The committed speaker model is a small test model (32 dimensions, one hidden layer of
random features); vosk-model-spk-0.4 is a full x-vector network, so its cost share is
larger and its thresholds need measuring with it, on real voices.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.asr.recognizer import LabelingRecognizer, Recognizer  # noqa: E402
from edge.asr.vosk import LoadedModel, load_model, load_speaker_model  # noqa: E402
from edge.core.config import SpeakersConfig  # noqa: E402
from edge.crypto.datakey import FILE, DataKey, KeySource  # noqa: E402
from edge.protocols.events import Utterance  # noqa: E402
from edge.speakers import SpeakerIdentification, SpeakerLabeler, VoiceprintStore  # noqa: E402

BENCH_KEY = DataKey(bytes(range(7, 39)), KeySource(FILE, Path("bench-key"), "journal.key_file"))

SPEAKERS = ROOT / "tests" / "fixtures" / "speakers"
META: dict[str, Any] = json.loads((SPEAKERS / "voices.json").read_text(encoding="utf-8"))
RESULTS = ROOT / "bench" / "results"
RATE = 16000
CHUNK = RATE * 2 // 10  # 100 ms, as a streaming client sends


# --- audio -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Turn:
    speaker: str
    start_ms: int
    end_ms: int


def pcm_of(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2), path
        return w.readframes(w.getnframes())


def conversation(voices: Sequence[str] | None = None) -> tuple[bytes, list[Turn]]:
    """The conversation, or only some voices' turns joined by its own 1.2 s gaps."""
    pcm = pcm_of(SPEAKERS / "conversation.wav")
    turns = META["conversation"]
    if voices is None:
        return pcm, [Turn(t["speaker"], t["start_ms"], t["end_ms"]) for t in turns]
    ms = RATE * 2 // 1000
    out, kept = bytearray(), []
    for t in turns:
        if t["speaker"] in voices:
            start = len(out) // ms + 200
            kept.append(Turn(t["speaker"], start, start + t["end_ms"] - t["start_ms"]))
            out += pcm[(t["start_ms"] - 200) * ms:(t["end_ms"] + 200) * ms] + bytes(800 * ms)
    return bytes(out), kept


def turn_of(turns: Sequence[Turn], u: Utterance) -> Turn:
    return max(turns, key=lambda t: min(u.end_ms, t.end_ms) - max(u.start_ms, t.start_ms))


def clip_words() -> list[str]:
    return sorted({w for p in META["clip_phrases"] for w in p.split()})


# --- decoding ----------------------------------------------------------------------------

@dataclass
class Decoded:
    finals: list[Utterance]
    cpu: float  # seconds of this thread's CPU
    wall: float


def decode(recognizer: Recognizer, pcm: bytes) -> Decoded:
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    out = [u for i in range(0, len(pcm), CHUNK) for u in recognizer.accept(pcm[i:i + CHUNK])]
    last = recognizer.flush()
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    if last is not None:
        out.append(last)
    return Decoded([u for u in out if u.is_final], cpu, wall)


def identification(store: Path, settings: SpeakersConfig) -> SpeakerIdentification:
    return SpeakerIdentification(
        VoiceprintStore(store, key=BENCH_KEY, threshold=settings.identification_threshold),
        diarization_threshold=settings.diarization_threshold,
        max_speakers=settings.max_speakers)


# --- accuracy ----------------------------------------------------------------------------

def best_mapping_accuracy(predicted: Sequence[str | None], truth: Sequence[str]) -> float:
    labels = sorted({p for p in predicted if p is not None})
    speakers = sorted(set(truth))
    targets: list[str | None] = [*speakers, *[None] * max(0, len(labels) - len(speakers))]
    best = 0
    for perm in itertools.permutations(targets, len(labels)):
        mapping = dict(zip(labels, perm, strict=True))
        best = max(best, sum(p is not None and mapping[p] == t
                             for p, t in zip(predicted, truth, strict=True)))
    return best / len(truth) if truth else 0.0


def diarization(served: LoadedModel, settings: SpeakersConfig, work: Path,
                voices: Sequence[str] | None) -> dict[str, Any]:
    pcm, turns = conversation(voices)
    ident = identification(work / f"none-{len(voices or [])}.json", settings)
    decoded = decode(LabelingRecognizer(served.recognizer(RATE, META["grammar"]),
                                        ident.track()), pcm)
    truth = [turn_of(turns, u).speaker for u in decoded.finals]
    labels = [u.speaker.label if u.speaker else None for u in decoded.finals]
    labelled = [(t, x) for t, x in zip(truth, labels, strict=True) if x is not None]
    return {
        "voices": sorted(set(t.speaker for t in turns)),
        "turns": len(turns),
        "finals": len(decoded.finals),
        "unlabelled_finals": labels.count(None),
        "labels": sorted({x for x in labels if x}),
        "accuracy": best_mapping_accuracy(labels, truth),
        "accuracy_of_labelled": best_mapping_accuracy([x for _, x in labelled],
                                                      [t for t, _ in labelled]),
        "sequence": [[t, x] for t, x in zip(truth, labels, strict=True)],
    }


def enrolled_identification(served: LoadedModel, settings: SpeakersConfig, work: Path
                            ) -> dict[str, Any]:
    ident = identification(work / "enrolled.json", settings)
    clip_vectors: dict[str, list[tuple[float, ...]]] = {}
    for voice in META["voices"]:
        vectors = []
        for path in sorted((SPEAKERS / "clips" / voice).glob("*.wav")):
            decoded = decode(served.recognizer(RATE, clip_words()), pcm_of(path))
            vectors += [u.speaker_vector for u in decoded.finals if u.speaker_vector]
        clip_vectors[voice] = vectors
    for voice in META["enrolled"]:
        ident.enroll(voice, "staff", clip_vectors[voice])

    pcm, turns = conversation()
    decoded = decode(LabelingRecognizer(served.recognizer(RATE, META["grammar"]),
                                        ident.track()), pcm)
    store = ident.store
    enrolled: list[tuple[str, Utterance]] = []
    strangers: list[tuple[str, Utterance]] = []
    for u in decoded.finals:
        who = turn_of(turns, u).speaker
        if u.speaker_vector is None:
            continue
        (enrolled if who in META["enrolled"] else strangers).append((who, u))
    right = sum(u.speaker is not None and u.speaker.label == who for who, u in enrolled)
    wrong_name = sum(u.speaker is not None and u.speaker.id is not None
                     and u.speaker.id.startswith("enrolled:") and u.speaker.label != who
                     for who, u in enrolled)
    stranger_vectors = [u.speaker_vector for _, u in strangers]
    stranger_vectors += [v for who in META["not_enrolled"] for v in clip_vectors[who]]
    rejected = sum(store.identify(v) is None for v in stranger_vectors)

    prints = {p.name: p.vector for p in store.list()}

    def score(v: Any, name: str | None = None) -> float:
        """Cosine to ``name``'s voiceprint, or to the nearest one."""
        unit = np.asarray(v) / np.linalg.norm(v)
        if name is not None:
            return float(prints[name] @ unit)
        return max(float(p @ unit) for p in prints.values())

    genuine = [score(u.speaker_vector, who) for who, u in enrolled]
    impostor = [score(v) for v in stranger_vectors]
    return {
        "enrolled": META["enrolled"], "not_enrolled": META["not_enrolled"],
        "enrolment_utterances": {v: len(clip_vectors[v]) for v in META["enrolled"]},
        "enrolled_finals": len(enrolled),
        "identification_accuracy": right / len(enrolled) if enrolled else 0.0,
        "wrong_names": wrong_name,
        "stranger_utterances": len(stranger_vectors),
        "rejection_rate": rejected / len(stranger_vectors) if stranger_vectors else 0.0,
        "genuine_scores": summary(genuine),
        "impostor_scores": summary(impostor),
        "threshold": settings.identification_threshold,
    }



def summary(xs: Sequence[float]) -> dict[str, float]:
    if not xs:
        return {}
    return {"min": round(min(xs), 4), "median": round(statistics.median(xs), 4),
            "max": round(max(xs), 4)}


# --- cost --------------------------------------------------------------------------------

def cost(model: LoadedModel, served: LoadedModel, rounds: int, grammar: list[str] | None,
         settings: SpeakersConfig, work: Path) -> dict[str, Any]:
    """CPU of decoding the conversation without and with speaker vectors, interleaved."""
    pcm, _ = conversation()
    audio_s = len(pcm) / (2 * RATE)
    runs: dict[str, list[Decoded]] = {"without": [], "with": []}
    factories: dict[str, Callable[[], Recognizer]] = {
        "without": lambda: model.recognizer(RATE, grammar),
        "with": lambda: LabelingRecognizer(served.recognizer(RATE, grammar),
                                           identification(work / "cost.json",
                                                          settings).track()),
    }
    for kind in factories:  # warm-up: a fresh graph expands lazily on first use
        decode(factories[kind](), pcm)
    for _ in range(rounds):
        for kind in ("without", "with"):
            runs[kind].append(decode(factories[kind](), pcm))
    cpu = {k: statistics.median(d.cpu for d in v) for k, v in runs.items()}
    finals = len(runs["with"][0].finals)
    return {
        "grammar": grammar is not None,
        "audio_seconds": round(audio_s, 2),
        "rounds": rounds,
        "cpu_without_s": round(cpu["without"], 4),
        "cpu_with_s": round(cpu["with"], 4),
        "rtf_without": round(cpu["without"] / audio_s, 4),
        "rtf_with": round(cpu["with"] / audio_s, 4),
        "ratio": round(cpu["with"] / cpu["without"], 4),
        "speaker_share_of_recognition": round(cpu["with"] / cpu["without"] - 1, 4),
        "finals": finals,
        "cpu_per_final_ms": round(1000 * (cpu["with"] - cpu["without"]) / max(1, finals), 3),
        "extra_cpu_ms_per_audio_s": round(1000 * (cpu["with"] - cpu["without"]) / audio_s, 3),
        "trials": {k: [round(d.cpu, 4) for d in v] for k, v in runs.items()},
    }


def labeler_cost(settings: SpeakersConfig, dim: int, work: Path) -> dict[str, Any]:
    """Time of one label decision (numpy): 3 session speakers and 2 voiceprints."""
    rng = np.random.default_rng(0)
    store = VoiceprintStore(work / "labeler.json", key=BENCH_KEY,
                            threshold=settings.identification_threshold)
    for name in ("a", "b"):
        store.enroll(name, None, [rng.standard_normal(dim)])
    voices = rng.standard_normal((5, dim))
    vectors = [tuple(voices[i % 5] + 0.3 * rng.standard_normal(dim)) for i in range(2000)]
    labeler = SpeakerLabeler(store=store)
    start = time.perf_counter()
    for v in vectors:
        labeler.label(v, duration_ms=2000)
    per = (time.perf_counter() - start) / len(vectors)
    return {"dim": dim, "us_per_final": round(1e6 * per, 2)}


# --- report ------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load_avg": os.getloadavg(),
            "python": platform.python_version()}


def main(argv: Sequence[str] | None = None) -> int:
    defaults = SpeakersConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speaker-model", type=Path, default=SPEAKERS / "spk-model")
    parser.add_argument("--diarization-threshold", type=float,
                        default=defaults.diarization_threshold)
    parser.add_argument("--identification-threshold", type=float,
                        default=defaults.identification_threshold)
    parser.add_argument("--rounds", type=int, default=5, help="cost trials per kind")
    parser.add_argument("--quick", action="store_true",
                        help="2 cost rounds, grammar only (no free dictation)")
    args = parser.parse_args(argv)
    settings = SpeakersConfig(diarization_threshold=args.diarization_threshold,
                              identification_threshold=args.identification_threshold,
                              max_speakers=defaults.max_speakers)
    rounds = 2 if args.quick else args.rounds
    model = load_model(None)
    spk = load_speaker_model(args.speaker_model)
    served = model.with_speaker_model(spk)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        three = diarization(served, settings, work, None)
        two = diarization(served, settings, work, ["kim", "park"])
        ident = enrolled_identification(served, settings, work)
        costs = [cost(model, served, rounds, META["grammar"], settings, work)]
        if not args.quick:
            costs.append(cost(model, served, max(2, rounds // 2), None, settings, work))
        dim = len(next(u.speaker_vector for u in decode(
            served.recognizer(RATE, clip_words()),
            pcm_of(SPEAKERS / "clips" / "kim" / "1.wav")).finals if u.speaker_vector))
        lab = labeler_cost(settings, dim, work)

    print(f"speaker model {spk.path} ({dim} dimensions); thresholds: diarization "
          f"{settings.diarization_threshold}, identification {settings.identification_threshold}")
    print()
    print(f"{'diarization':<34}{'turns':>7}{'finals':>8}{'no label':>10}{'labels':>8}"
          f"{'accuracy':>10}{'of labelled':>13}")
    for name, d in (("3 voices (conversation)", three), ("2 voices (kim, park)", two)):
        print(f"{name:<34}{d['turns']:>7}{d['finals']:>8}{d['unlabelled_finals']:>10}"
              f"{len(d['labels']):>8}{d['accuracy']:>10.3f}{d['accuracy_of_labelled']:>13.3f}")
    print()
    print(f"identification: {ident['identification_accuracy']:.3f} of "
          f"{ident['enrolled_finals']} finals of enrolled voices named right "
          f"({ident['wrong_names']} wrong names); unenrolled voice rejected "
          f"{ident['rejection_rate']:.3f} of {ident['stranger_utterances']} utterances")
    print(f"  scores: genuine {ident['genuine_scores']}, best impostor "
          f"{ident['impostor_scores']}, threshold {ident['threshold']}")
    print()
    print(f"{'cost (CPU, median)':<22}{'audio s':>9}{'without s':>11}{'with s':>9}"
          f"{'ratio':>8}{'extra':>8}{'ms/final':>10}{'ms/audio s':>12}")
    for c in costs:
        name = "grammar" if c["grammar"] else "free dictation"
        print(f"{name:<22}{c['audio_seconds']:>9.1f}{c['cpu_without_s']:>11.3f}"
              f"{c['cpu_with_s']:>9.3f}{c['ratio']:>8.3f}"
              f"{100 * c['speaker_share_of_recognition']:>7.1f}%{c['cpu_per_final_ms']:>10.2f}"
              f"{c['extra_cpu_ms_per_audio_s']:>12.2f}")
    print(f"labeler (numpy, in the same thread call): {lab['us_per_final']} us per final")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other work "
          "on the machine inflates CPU times)")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "speakers.json"
    out.write_text(json.dumps({
        "speaker_model": str(spk.path), "dim": dim,
        "settings": {"diarization_threshold": settings.diarization_threshold,
                     "identification_threshold": settings.identification_threshold,
                     "max_speakers": settings.max_speakers},
        "diarization": {"three_voices": three, "two_voices": two},
        "identification": ident, "cost": costs, "labeler": lab,
        "machine": machine(), "seconds": round(time.time() - started, 1),
    }, indent=1, ensure_ascii=False) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
