"""The speaker model builder and the committed test speaker model, through real Vosk.

The held-out conversation (fixtures/speakers) has three voices that are not among the
model's training speakers, speaking phrases that are not training phrases. It is decoded
by the Korean model with the committed speaker model, and the vectors go through
:mod:`edge.speakers` as a session would use them.
"""

from __future__ import annotations

import json
import re
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import vosk
from speaker_audio import best_mapping_accuracy

from edge.asr.vosk import LoadedModel, load_speaker_model
from edge.speakers import Diarizer, SpeakerLabeler, VoiceprintStore
from helpers import FIXTURES, TEST_KEY
from tools.spkmodel import (
    FEATURE_DIM,
    FrameLayer,
    SpeakerNet,
    build,
    fit_lda,
    main,
    random_layer,
    speaker_vectors,
)

SPEAKERS = FIXTURES / "speakers"
SPK_MODEL = SPEAKERS / "spk-model"
META: dict[str, Any] = json.loads((SPEAKERS / "voices.json").read_text(encoding="utf-8"))
DIM = 32


@dataclass(frozen=True)
class Heard:
    """One final result of the conversation and the turn it overlaps most."""

    speaker: str
    start_ms: int
    end_ms: int
    vector: np.ndarray | None
    frames: int


def words(phrases: Sequence[str]) -> list[str]:
    return sorted({w for p in phrases for w in p.split()})


def decode(model: LoadedModel, spk: Any, path: Path, grammar: Sequence[str]) -> list[dict]:
    """Final results with text, fed in 200 ms chunks as the daemon does."""
    with wave.open(str(path), "rb") as w:
        rate = w.getframerate()
        pcm = w.readframes(w.getnframes())
    rec = vosk.KaldiRecognizer(model.model, rate, json.dumps(list(grammar), ensure_ascii=False))
    rec.SetSpkModel(spk)
    rec.SetWords(True)
    step = int(rate * 0.2) * 2
    results = []
    for i in range(0, len(pcm), step):
        if rec.AcceptWaveform(pcm[i:i + step]):
            results.append(json.loads(rec.Result()))
    results.append(json.loads(rec.FinalResult()))
    return [r for r in results if r.get("text")]


@pytest.fixture(scope="module")
def spk() -> Any:
    return vosk.SpkModel(str(SPK_MODEL))


@pytest.fixture(scope="module")
def heard(model: LoadedModel, spk: Any) -> list[Heard]:
    turns = META["conversation"]
    out = []
    for r in decode(model, spk, SPEAKERS / "conversation.wav", META["grammar"]):
        start = round(r["result"][0]["start"] * 1000)
        end = round(r["result"][-1]["end"] * 1000)
        overlap = [max(0, min(end, t["end_ms"]) - max(start, t["start_ms"])) for t in turns]
        turn = turns[int(np.argmax(overlap))]
        vector = np.asarray(r["spk"]) if "spk" in r else None
        out.append(Heard(turn["speaker"], start, end, vector, r.get("spk_frames", 0)))
    return out


@pytest.fixture(scope="module")
def clip_vectors(model: LoadedModel, spk: Any) -> dict[str, list[np.ndarray]]:
    grammar = words(META["clip_phrases"])
    return {who: [np.asarray(r["spk"]) for path in sorted((SPEAKERS / "clips" / who).glob("*.wav"))
                  for r in decode(model, spk, path, grammar) if "spk" in r]
            for who in META["voices"]}


# --- the committed model -------------------------------------------------------------------

def test_model_directory_is_kaldi_text_and_small() -> None:
    names = sorted(p.name for p in SPK_MODEL.iterdir())
    assert names == ["final.ext.raw", "mean.vec", "mfcc.conf", "transform.mat"]
    assert sum(p.stat().st_size for p in SPK_MODEL.iterdir()) < 200_000
    conf = (SPK_MODEL / "mfcc.conf").read_text()
    assert f"--num-ceps={FEATURE_DIM}" in conf and "--sample-frequency=16000" in conf
    net = (SPK_MODEL / "final.ext.raw").read_text()
    assert net.startswith("<Nnet3> \ninput-node name=input dim=30\n")
    for token in ("<StatisticsExtractionComponent>", "<IncludeVarinance> T",
                  "<StatisticsPoolingComponent>", "<LeftContext> 0 <RightContext> 10000",
                  "<OutputStddevs> T", "<FixedAffineComponent>", "output-node name=output"):
        assert token in net
    assert re.search(r"<NumComponents> 5\n", net) and net.endswith("</Nnet3>\n")
    mean = (SPK_MODEL / "mean.vec").read_text().split()
    assert mean[0] == "[" and mean[-1] == "]" and len(mean) == DIM + 2
    rows = (SPK_MODEL / "transform.mat").read_text().strip().splitlines()
    assert rows[0] == "[" and rows[-1].endswith("]") and len(rows) == DIM + 1


def test_every_utterance_gets_a_vector(heard: list[Heard]) -> None:
    turns = META["conversation"]
    assert all(t["end_ms"] - t["start_ms"] >= 1500 for t in turns)
    assert len(heard) == len(turns)  # one final result per turn
    assert [h.speaker for h in heard] == [t["speaker"] for t in turns]
    for h in heard:
        assert h.vector is not None and h.vector.shape == (DIM,)
        assert h.frames >= 50
        # Vosk scales vectors to a norm of sqrt(dim).
        assert np.linalg.norm(h.vector) == pytest.approx(np.sqrt(DIM), rel=1e-3)


def test_diarization_of_the_conversation(heard: list[Heard]) -> None:
    diarizer = Diarizer()
    labels = [diarizer.assign(h.vector, duration_ms=h.end_ms - h.start_ms).label
              for h in heard]
    accuracy = best_mapping_accuracy(labels, [h.speaker for h in heard])
    print(f"diarization: {accuracy:.3f} of {len(heard)} utterances, labels {labels}")
    assert accuracy >= 0.9
    assert len(diarizer.speakers) == len(META["voices"])


def test_enrolled_speakers_are_identified(heard: list[Heard], tmp_path: Path,
                                          clip_vectors: dict[str, list[np.ndarray]]) -> None:
    store = VoiceprintStore(tmp_path / "voiceprints.json", key=TEST_KEY)
    for who in META["enrolled"]:
        assert len(clip_vectors[who]) == 2
        store.enroll(who, "staff", clip_vectors[who])

    enrolled = [h for h in heard if h.speaker in META["enrolled"]]
    hits = [store.identify(h.vector) for h in enrolled]
    right = sum(m is not None and m.name == h.speaker for m, h in zip(hits, enrolled, strict=True))
    rate = right / len(enrolled)

    strangers = [h.vector for h in heard if h.speaker in META["not_enrolled"]]
    strangers += [v for who in META["not_enrolled"] for v in clip_vectors[who]]
    rejected = sum(store.identify(v) is None for v in strangers) / len(strangers)
    scores = sorted(round(m.score, 3) for m in hits if m is not None)
    print(f"identified {rate:.3f} of {len(enrolled)}, scores {scores}; "
          f"stranger rejected {rejected:.3f} of {len(strangers)}")
    assert rate >= 0.95
    assert rejected >= 0.95


def test_labeler_over_the_conversation(heard: list[Heard], tmp_path: Path,
                                       clip_vectors: dict[str, list[np.ndarray]]) -> None:
    store = VoiceprintStore(tmp_path / "voiceprints.json", key=TEST_KEY)
    for who in META["enrolled"]:
        store.enroll(who, "staff", clip_vectors[who])
    labeler = SpeakerLabeler(Diarizer(), store)
    decisions = [labeler.label(h.vector, duration_ms=h.end_ms - h.start_ms) for h in heard]
    expected = {who: f"enrolled:{who}" for who in META["enrolled"]}
    expected.update({who: "session:1" for who in META["not_enrolled"]})
    got = [d.speaker_id for d in decisions]
    right = sum(g == expected[h.speaker] for g, h in zip(got, heard, strict=True))
    assert right / len(heard) >= 0.95, got


def test_eight_khz_stream_with_the_speaker_model(model: LoadedModel, spk: Any) -> None:
    # mfcc.conf allows upsampling: without it Vosk fails on 8 kHz audio once a speaker
    # model is set ("Failed to process waveform").
    phrases = json.loads((FIXTURES / "phrases.json").read_text(encoding="utf-8"))
    results = decode(model, spk, FIXTURES / "speech_ko_8k.wav", words(phrases["utterances"]))
    assert any(len(r.get("spk", [])) == DIM for r in results)


# --- building ------------------------------------------------------------------------------

def test_build_from_clips_loads_in_vosk(model: LoadedModel, tmp_path: Path) -> None:
    clips = sorted((SPEAKERS / "clips").glob("*/*.wav"))
    out = tmp_path / "model"
    report = build(out, clips, dim=2, features=24, model=model,
                   grammar=words(META["clip_phrases"]), work_dir=tmp_path)
    assert report.speakers == 3 and report.utterances == 6 and report.dim == 2
    assert report.train_accuracy == 1.0
    built = model.with_speaker_model(load_speaker_model(out))
    vectors = speaker_vectors(built, clips[0], words(META["clip_phrases"]))
    assert len(vectors) == 1 and vectors[0].shape == (2,)


def test_cli_build_needs_two_speakers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clips = sorted((SPEAKERS / "clips" / "kim").glob("*.wav"))
    assert main(["build", str(tmp_path / "m"), "--train", *map(str, clips)]) == 2
    assert "two speakers" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(tmp_path / "m"), "--train", "a/x.wav", "b/y.wav",
                 "--dim", "0"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["build", str(tmp_path / "m")])  # --train is required
    assert info.value.code == 2


def test_rescaling_keeps_the_function() -> None:
    rng = np.random.default_rng(1)
    layer = random_layer(16, np.abs(rng.normal(20, 5, FEATURE_DIM)), seed=3)
    net = SpeakerNet(layer=layer, projection=rng.normal(0, 0.01, (4, 32)),
                     offset=rng.normal(0, 0.1, 4), mean=rng.normal(0, 0.1, 4),
                     transform=rng.normal(0, 1, (4, 4)))
    frames = rng.normal(0, 20, (120, FEATURE_DIM))
    tidy = net.rescaled()
    assert np.allclose(tidy.embed(frames), net.embed(frames), atol=1e-9)
    assert np.allclose(np.sqrt(np.mean(tidy.projection ** 2, axis=1)), 1.0)
    with pytest.raises(ValueError, match="shapes"):
        SpeakerNet(layer=layer, projection=np.zeros((4, 31)), offset=np.zeros(4),
                   mean=np.zeros(4), transform=np.eye(4))


def test_lda_separates_and_whitens() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (5, 40))
    labels = [f"s{i}" for i in range(5) for _ in range(30)]
    x = np.vstack([c + rng.normal(0, 0.3, (30, 40)) for c in centers])
    w, b = fit_lda(x, labels, dim=8, regularization=0.01)
    assert w.shape == (4, 40)  # at most speakers - 1 directions
    y = x @ w.T + b
    assert np.allclose(y.mean(axis=0), 0, atol=1e-8)
    within = np.vstack([y[i * 30:(i + 1) * 30] - y[i * 30:(i + 1) * 30].mean(axis=0)
                        for i in range(5)])
    assert np.allclose(np.cov(within.T, bias=True), np.eye(4), atol=0.15)


def test_frame_layer_shape() -> None:
    layer = FrameLayer(np.zeros((3, FEATURE_DIM)), np.zeros(3))
    assert layer.features == 3
