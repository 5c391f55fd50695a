"""Speaker labels from vectors: cosine, the session diarizer, the voiceprint store and
the labeler that combines them. Synthetic vectors; no Vosk."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.core.errors import EdgeError
from edge.speakers.diarize import NO_DECISION, Diarizer, SpeakerDecision, cosine
from edge.speakers.identification import SpeakerIdentification, SpeakerLabeler, SpeakerStatus
from edge.speakers.voiceprints import Match, VoiceprintStore, VoiceprintStoreError
from helpers import TEST_KEY, read_store

DIM = 32


def voice(seed: int) -> np.ndarray:
    """A speaker's true direction."""
    v = np.random.default_rng(seed).standard_normal(DIM)
    return v / np.linalg.norm(v)


def utterance(center: np.ndarray, seed: int, noise: float = 0.35) -> np.ndarray:
    """One utterance's vector: the speaker's direction plus noise (cosine about 0.9)."""
    n = np.random.default_rng(10_000 + seed).standard_normal(DIM) / np.sqrt(DIM)
    return (center + noise * n) * 7.3  # Vosk's vectors are not unit length


# --- cosine --------------------------------------------------------------------------------

def test_cosine_basics() -> None:
    a = np.array([1.0, 0.0, 0.0])
    assert cosine(a, a * 5) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(a, [0.0, 2.0, 0.0]) == pytest.approx(0.0)
    assert cosine([1, 1], [1, 0]) == pytest.approx(np.sqrt(0.5))


@pytest.mark.parametrize("bad", [[0.0, 0.0, 0.0], [np.nan, 1.0, 0.0], [np.inf, 0.0, 0.0]])
def test_cosine_without_direction_is_zero(bad: list[float]) -> None:
    assert cosine(bad, [1.0, 0.0, 0.0]) == 0.0
    assert cosine([1.0, 0.0, 0.0], bad) == 0.0


def test_cosine_dimension_mismatch() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        cosine([1.0, 0.0], [1.0, 0.0, 0.0])


# --- diarizer ------------------------------------------------------------------------------

def test_three_speakers_labelled_in_order_of_appearance() -> None:
    speakers = {name: voice(i) for i, name in enumerate("abc")}
    order = "abacbbcaacbcab"
    d = Diarizer()
    labels = [d.assign(utterance(speakers[s], i), duration_ms=2000).label
              for i, s in enumerate(order)]
    mapping = {"a": "Speaker 1", "b": "Speaker 2", "c": "Speaker 3"}
    assert labels == [mapping[s] for s in order]
    assert d.speakers == ["Speaker 1", "Speaker 2", "Speaker 3"]
    stats = d.statistics()
    assert stats["speakers"] == 3 and stats["new"] == 3 and stats["matched"] == len(order) - 3


def test_decision_fields() -> None:
    d = Diarizer(threshold=0.5)
    first = d.assign(voice(1), duration_ms=2000)
    assert first == SpeakerDecision("Speaker 1", "session:1", 1.0)
    again = d.assign(utterance(voice(1), 1), duration_ms=2000)
    assert again.label == "Speaker 1" and again.speaker_id == "session:1"
    assert again.confidence is not None and 0.5 <= again.confidence <= 1.0
    assert again.confidence == pytest.approx(cosine(voice(1), utterance(voice(1), 1)), abs=1e-4)
    other = d.assign(voice(2), duration_ms=2000)
    assert other.label == "Speaker 2" and other.speaker_id == "session:2"
    # New speaker: confidence = 1 - best similarity to a known centroid, here the mean
    # of speaker 1's two unit vectors.
    u = utterance(voice(1), 1)
    centroid = voice(1) + u / np.linalg.norm(u)
    assert other.confidence == pytest.approx(1 - max(0.0, cosine(centroid, voice(2))), abs=1e-4)


def test_identical_vectors_are_one_speaker() -> None:
    d = Diarizer()
    v = voice(3)
    decisions = [d.assign(v.copy(), duration_ms=1500) for _ in range(5)]
    assert {x.label for x in decisions} == {"Speaker 1"}
    assert all(x.confidence == 1.0 for x in decisions)


@pytest.mark.parametrize("vector", [None, [], np.zeros(DIM), np.full(DIM, np.nan),
                                    np.r_[np.inf, np.ones(DIM - 1)]])
def test_no_usable_vector_gives_no_label(vector: Any) -> None:
    d = Diarizer()
    d.assign(voice(1), duration_ms=2000)
    assert d.assign(vector, duration_ms=300) == NO_DECISION
    assert SpeakerDecision(None, None, None) == NO_DECISION
    assert d.speakers == ["Speaker 1"]
    assert d.statistics()["no_vector"] == 1


def test_no_vector_before_any_speaker_does_not_use_a_number() -> None:
    d = Diarizer()
    assert d.assign(None, duration_ms=200).label is None
    assert d.assign(voice(5), duration_ms=2000).label == "Speaker 1"


def test_threshold_decides_same_or_new() -> None:
    a = voice(1)
    b = 0.6 * a + 0.8 * voice(2)  # cosine with a about 0.6
    sim = cosine(a, b)
    strict = Diarizer(threshold=sim + 0.05)
    strict.assign(a, duration_ms=2000)
    assert strict.assign(b, duration_ms=2000).label == "Speaker 2"
    lenient = Diarizer(threshold=sim - 0.05)
    lenient.assign(a, duration_ms=2000)
    assert lenient.assign(b, duration_ms=2000).label == "Speaker 1"


def test_centroid_is_running_mean_of_unit_vectors() -> None:
    a = np.zeros(DIM)
    a[0] = 1.0
    b = np.zeros(DIM)
    b[1] = 1.0
    d = Diarizer(threshold=0.5)
    d.assign(a * 100, duration_ms=2000)  # the length must not weigh in
    mid = (a + b) / np.linalg.norm(a + b)
    d.assign(mid, duration_ms=2000)  # cos 0.707: joins, centroid moves towards b
    # Centroid now (a + mid) / 2: b is at cos 0.38 from it; at 0.0 from a alone.
    decision = d.assign(b, duration_ms=2000)
    assert decision.label == "Speaker 2"
    assert decision.confidence == pytest.approx(1 - cosine(a + mid, b), abs=1e-3)


def test_cluster_cap_assigns_nearest_with_lower_confidence() -> None:
    d = Diarizer(max_speakers=2, threshold=0.6)
    d.assign(voice(1), duration_ms=2000)
    d.assign(voice(2), duration_ms=2000)
    matched = d.assign(utterance(voice(2), 7), duration_ms=2000)
    third = 0.45 * voice(2) + 0.89 * voice(3)  # nearest to speaker 2, below threshold
    forced = d.assign(third, duration_ms=2000)
    assert forced.label == "Speaker 2"
    assert d.speakers == ["Speaker 1", "Speaker 2"]
    assert forced.confidence is not None and matched.confidence is not None
    assert forced.confidence < 0.6 <= matched.confidence
    assert d.statistics()["forced"] == 1


def test_forced_assignment_does_not_move_the_centroid() -> None:
    d = Diarizer(max_speakers=1, threshold=0.9)
    a = voice(1)
    d.assign(a, duration_ms=2000)
    for i in range(20):
        d.assign(voice(100 + i), duration_ms=2000)  # all forced onto speaker 1
    assert d.assign(a, duration_ms=2000).confidence == pytest.approx(1.0)


def test_short_utterance_does_not_open_a_speaker() -> None:
    d = Diarizer(min_new_speaker_ms=1000)
    d.assign(voice(1), duration_ms=2000)
    short = d.assign(voice(2), duration_ms=700)
    assert short.label == "Speaker 1"
    assert short.confidence is not None and short.confidence < d.threshold
    assert d.assign(voice(2), duration_ms=1000).label == "Speaker 2"


def test_first_utterance_opens_a_speaker_even_if_short() -> None:
    d = Diarizer(min_new_speaker_ms=1000)
    assert d.assign(voice(1), duration_ms=600).label == "Speaker 1"


def test_dimension_change_within_a_session_is_an_error() -> None:
    d = Diarizer()
    d.assign(voice(1), duration_ms=2000)
    with pytest.raises(ValueError, match="dimensions"):
        d.assign(np.ones(DIM + 1), duration_ms=2000)


def test_reset_forgets_speakers() -> None:
    d = Diarizer()
    d.assign(voice(1), duration_ms=2000)
    d.assign(voice(2), duration_ms=2000)
    d.reset()
    assert d.speakers == []
    assert d.assign(voice(2), duration_ms=2000).label == "Speaker 1"
    d.reset()
    assert d.assign(np.ones(8), duration_ms=2000).label == "Speaker 1"  # any dimension again


@pytest.mark.parametrize("kwargs", [{"threshold": 1.5}, {"threshold": -2}, {"max_speakers": 0}])
def test_diarizer_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Diarizer(**kwargs)


# --- voiceprint store ----------------------------------------------------------------------

FIXED_TIME = 1_700_000_000.0


def store_at(path: Path, **kwargs: Any) -> VoiceprintStore:
    return VoiceprintStore(path, key=TEST_KEY, clock=lambda: FIXED_TIME, **kwargs)


def test_missing_file_is_an_empty_store(tmp_path: Path) -> None:
    s = store_at(tmp_path / "voiceprints.json")
    s.load()
    assert len(s) == 0 and s.list() == [] and s.dim is None
    assert s.identify(voice(1)) is None
    assert not (tmp_path / "voiceprints.json").exists()


def test_enroll_identify_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "voiceprints.json"
    s = store_at(path, threshold=0.7)
    kim = s.enroll("Kim", "clinician", [utterance(voice(1), 1), utterance(voice(1), 2)])
    s.enroll("Park", "patient", [utterance(voice(2), 3)])
    assert kim.count == 2 and kim.role == "clinician" and kim.created == "2023-11-14T22:13:20Z"
    assert np.linalg.norm(kim.vector) == pytest.approx(1.0)

    match = s.identify(utterance(voice(1), 9))
    assert isinstance(match, Match)
    assert match.name == "Kim" and match.role == "clinician" and match.score >= 0.7
    assert s.identify(utterance(voice(2), 9)).name == "Park"  # type: ignore[union-attr]
    assert s.identify(voice(3)) is None  # a stranger
    assert s.identify(None) is None
    assert s.identify(np.zeros(DIM)) is None

    again = store_at(path, threshold=0.7)
    again.load()
    assert [p.name for p in again.list()] == ["Kim", "Park"]
    assert again.get("Kim").count == 2  # type: ignore[union-attr]
    assert np.allclose(again.get("Kim").vector, kim.vector)  # type: ignore[union-attr]
    assert again.identify(utterance(voice(2), 11)).name == "Park"  # type: ignore[union-attr]


def test_identify_threshold(tmp_path: Path) -> None:
    a = voice(1)
    b = 0.5 * a + np.sqrt(0.75) * voice(2)
    sim = cosine(a, b)
    s = store_at(tmp_path / "v.json", threshold=sim + 0.01)
    s.enroll("A", None, [a])
    assert s.identify(b) is None
    s.threshold = sim - 0.01
    match = s.identify(b)
    assert match is not None and match[:2] == ("A", None)
    assert match.score == pytest.approx(sim)


def test_identify_picks_the_best_match(tmp_path: Path) -> None:
    s = store_at(tmp_path / "v.json", threshold=0.3)
    a, b = voice(1), voice(2)
    s.enroll("A", None, [a])
    s.enroll("B", None, [b])
    probe = 0.6 * a + 0.8 * b
    assert s.identify(probe).name == "B"  # type: ignore[union-attr]


def test_file_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "voiceprints.json"
    old = os.umask(0o000)
    try:
        store_at(path).enroll("Kim", None, [voice(1)])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store_at(path).remove("Kim")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_loose_permissions_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "voiceprints.json"
    store_at(path).enroll("Kim", None, [voice(1)])
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="edge.speakers.voiceprints"):
        store_at(path).load()
    assert "0600" in caplog.text and "644" in caplog.text


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "voiceprints.json"
    s = store_at(path)
    s.enroll("Kim", None, [voice(1)])
    before = path.read_bytes()

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(VoiceprintStoreError, match="No space left"):
        s.enroll("Park", None, [voice(2)])
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voiceprints.json"]
    assert [p.name for p in s.list()] == ["Kim"]  # memory unchanged as well


def test_unwritable_directory(tmp_path: Path) -> None:
    s = store_at(tmp_path / "missing-dir" / "v.json")
    with pytest.raises(VoiceprintStoreError, match="cannot write"):
        s.enroll("Kim", None, [voice(1)])
    assert len(s) == 0


def test_remove(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    s = store_at(path, threshold=0.7)
    s.enroll("Kim", None, [voice(1)])
    s.enroll("Park", None, [voice(2)])
    assert s.remove("Kim") is True
    assert s.remove("Kim") is False
    assert s.remove("Nobody") is False
    assert s.identify(voice(1)) is None
    reloaded = store_at(path)
    reloaded.load()
    assert [p.name for p in reloaded.list()] == ["Park"]


def test_re_enroll_replaces(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    s = store_at(path, threshold=0.8)
    s.enroll("Kim", "clinician", [voice(1), voice(1)])
    s.enroll("Kim", "nurse", [voice(2)])
    assert len(s) == 1
    kim = s.get("Kim")
    assert kim is not None and kim.role == "nurse" and kim.count == 1
    assert s.identify(voice(1)) is None
    assert s.identify(voice(2)).name == "Kim"  # type: ignore[union-attr]
    assert len(read_store(path)["voiceprints"]) == 1


def test_enrolment_is_the_mean_direction(tmp_path: Path) -> None:
    s = store_at(tmp_path / "v.json")
    a = np.zeros(DIM)
    a[0] = 1.0
    b = np.zeros(DIM)
    b[1] = 1.0
    p = s.enroll("X", None, [a * 3, b * 0.1])  # lengths do not weigh in
    assert np.allclose(p.vector[:2], [np.sqrt(0.5), np.sqrt(0.5)])


@pytest.mark.parametrize(("name", "role", "vectors", "message"), [
    ("", None, [np.ones(DIM)], "name"),
    ("   ", None, [np.ones(DIM)], "name"),
    ("a\nb", None, [np.ones(DIM)], "control"),
    ("x" * 201, None, [np.ones(DIM)], "200"),
    ("Kim", 5, [np.ones(DIM)], "role"),
    ("Kim", None, [], "at least one"),
    ("Kim", None, [np.zeros(DIM)], "zero"),
    ("Kim", None, [np.full(DIM, np.nan)], "finite"),
    ("Kim", None, [np.ones(DIM), np.ones(DIM + 1)], "different dimensions"),
    ("Kim", None, [np.ones(DIM), -np.ones(DIM)], "cancel"),
])
def test_enroll_rejects(tmp_path: Path, name: Any, role: Any, vectors: list[np.ndarray],
                        message: str) -> None:
    s = store_at(tmp_path / "v.json")
    with pytest.raises(ValueError, match=message):
        s.enroll(name, role, vectors)
    assert not (tmp_path / "v.json").exists()


def test_enroll_with_another_dimension_is_refused(tmp_path: Path) -> None:
    s = store_at(tmp_path / "v.json")
    s.enroll("Kim", None, [voice(1)])
    with pytest.raises(ValueError, match="speaker model has changed"):
        s.enroll("Park", None, [np.ones(DIM * 4)])
    # Re-enrolling the only voiceprint with a new model's vectors is fine.
    s.enroll("Kim", None, [np.ones(DIM * 4)])
    assert s.dim == DIM * 4


def test_identify_with_another_dimension_warns_once(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    s = store_at(tmp_path / "v.json")
    s.enroll("Kim", None, [voice(1)])
    with caplog.at_level(logging.WARNING, logger="edge.speakers.voiceprints"):
        assert s.identify(np.ones(DIM * 4)) is None
        assert s.identify(np.ones(DIM * 4)) is None
    assert len(caplog.records) == 1 and "enrolled again" in caplog.text


def test_vectors_never_reach_logs_or_reprs(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    v = np.full(DIM, 0.123456789)
    s = store_at(tmp_path / "v.json")
    with caplog.at_level(logging.DEBUG):
        p = s.enroll("Kim", "clinician", [v])
        s.identify(np.full(DIM * 2, 0.98765))
        d = Diarizer()
        d.assign(v, duration_ms=2000)
    text = caplog.text + repr(p) + repr(s.list()) + repr(d.__dict__)
    assert "0.1767" not in text and "0.123" not in text and "0.987" not in text


def write_store(path: Path, body: Any) -> None:
    path.write_text(body if isinstance(body, str) else json.dumps(body))


def good_entry(**overrides: Any) -> dict[str, Any]:
    entry = {"name": "Kim", "role": "clinician", "count": 2,
             "created": "2024-01-01T00:00:00Z", "vector": [1.0] + [0.0] * (DIM - 1)}
    entry.update(overrides)
    return entry


@pytest.mark.parametrize(("body", "message"), [
    ("{not json", "not valid JSON"),
    ("\xff\xfe", "not valid JSON"),
    ('{"version": 1, "dim": 32, "voiceprints": [{"vector": [NaN]}]}', "not valid JSON"),
    ([], "version"),
    ({"version": 2, "voiceprints": []}, "version"),
    ({"version": 1, "voiceprints": {}}, "must be a list"),
    ({"version": 1, "dim": "32", "voiceprints": [good_entry()]}, "dim"),
    ({"version": 1, "dim": 32, "voiceprints": ["Kim"]}, "not an object"),
    ({"version": 1, "dim": 32, "voiceprints": [good_entry(name="")]}, "no name"),
    ({"version": 1, "dim": 32, "voiceprints": [good_entry(), good_entry()]}, "twice"),
    ({"version": 1, "dim": 32, "voiceprints": [good_entry(role=3)]}, "role"),
    ({"version": 1, "dim": 32, "voiceprints": [good_entry(count=0)]}, "count"),
    ({"version": 1, "dim": 32, "voiceprints": [good_entry(count=True)]}, "count"),
    ({"version": 1, "dim": 32, "voiceprints": [good_entry(created=None)]}, "created"),
    ({"version": 1, "dim": 32, "voiceprints": [good_entry(vector="1,2")]}, "list of numbers"),
    ({"version": 1, "dim": 32, "voiceprints": [good_entry(vector=[1.0] * 31)]},
     "31 numbers, expected 32"),
    ({"version": 1, "dim": 32, "voiceprints": [good_entry(vector=[0.0] * 32)]}, "zero"),
    ({"version": 1, "dim": 32, "voiceprints": [good_entry(vector=[1e999] + [0.0] * 31)]},
     "not valid JSON"),  # json.dumps writes Infinity
    ({"version": 1, "dim": 32, "voiceprints": [good_entry(vector=[True] * 32)]},
     "list of numbers"),
])
def test_damaged_file_is_an_error(tmp_path: Path, body: Any, message: str) -> None:
    path = tmp_path / "v.json"
    if isinstance(body, str) and body.startswith("\xff"):
        path.write_bytes(b"\xff\xfe\x00")
    else:
        write_store(path, body)
    s = store_at(path)
    with pytest.raises(VoiceprintStoreError, match=message) as info:
        s.load()
    assert isinstance(info.value, EdgeError)
    assert str(path) in str(info.value)


def test_nan_written_as_1e999_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    path.write_text('{"version": 1, "dim": 2, "voiceprints": [{"name": "K", "role": null, '
                    '"count": 1, "created": "x", "vector": [1e999, -1e999]}]}')
    with pytest.raises(VoiceprintStoreError, match="not finite"):
        store_at(path).load()


def test_unreadable_path_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(VoiceprintStoreError, match="cannot read"):
        store_at(tmp_path / "dir.json").load()


def test_damaged_file_is_not_overwritten_by_a_failed_load(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    path.write_text("{oops")
    s = store_at(path)
    with pytest.raises(VoiceprintStoreError):
        s.load()
    assert path.read_text() == "{oops"


def test_store_rejects_bad_threshold(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        VoiceprintStore(tmp_path / "v.json", key=TEST_KEY, threshold=2.0)


# --- labeler -------------------------------------------------------------------------------

def test_labeler_names_enrolled_and_numbers_the_rest(tmp_path: Path) -> None:
    store = store_at(tmp_path / "v.json", threshold=0.7)
    store.enroll("Kim", "clinician", [utterance(voice(1), 1), utterance(voice(1), 2)])
    labeler = SpeakerLabeler(Diarizer(threshold=0.7), store)

    kim = labeler.label(utterance(voice(1), 3), duration_ms=2000)
    assert kim.label == "Kim" and kim.speaker_id == "enrolled:Kim" and kim.role == "clinician"
    assert kim.confidence is not None and kim.confidence >= 0.7

    stranger = labeler.label(utterance(voice(2), 4), duration_ms=2000)
    assert stranger == SpeakerDecision("Speaker 1", "session:1", 1.0)
    second = labeler.label(utterance(voice(3), 5), duration_ms=2000)
    assert second.label == "Speaker 2"
    assert labeler.label(utterance(voice(2), 6), duration_ms=2000).label == "Speaker 1"
    assert labeler.label(utterance(voice(1), 7), duration_ms=2000).label == "Kim"
    assert labeler.label(None, duration_ms=300) == NO_DECISION
    assert labeler.statistics() == {"identified": 2, "speakers": 2, "matched": 1, "new": 2,
                                    "forced": 0, "no_vector": 1}


def test_labeler_without_store_or_voiceprints_only_diarizes(tmp_path: Path) -> None:
    for labeler in (SpeakerLabeler(), SpeakerLabeler(store=store_at(tmp_path / "v.json"))):
        assert labeler.label(voice(1), duration_ms=2000).label == "Speaker 1"
        assert labeler.label(voice(2), duration_ms=2000).label == "Speaker 2"


# --- the daemon's view: reload, damage, tracks ----------------------------------------------

def identification_at(path: Path, **kwargs: Any) -> SpeakerIdentification:
    return SpeakerIdentification(VoiceprintStore(path, key=TEST_KEY, threshold=0.7), **kwargs)


def test_changed_notices_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    mine, theirs = store_at(path), store_at(path)
    mine.load()
    assert not mine.changed()
    theirs.enroll("Kim", None, [voice(1)])
    assert mine.changed()
    mine.load()
    assert not mine.changed() and mine.get("Kim") is not None
    mine.enroll("Park", None, [voice(2)])
    assert not mine.changed()  # its own write
    path.unlink()
    assert mine.changed()


def test_identification_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    ident = identification_at(path)
    assert ident.refresh() == SpeakerStatus(enabled=True, names=True, enrolled=0)
    other = store_at(path)
    other.enroll("Kim", "doctor", [voice(1)])
    assert ident.refresh().enrolled == 1
    labeler = ident.labeler()
    assert labeler.label(utterance(voice(1), 1), duration_ms=2000).label == "Kim"
    other.remove("Kim")
    ident.refresh()
    assert labeler.label(utterance(voice(1), 2), duration_ms=2000).label == "Speaker 1"


def test_a_damaged_file_turns_names_off_and_is_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "v.json"
    ident = identification_at(path)
    ident.enroll("Kim", None, [voice(1)])
    path.write_text("{broken")
    for _ in range(3):
        status = ident.refresh()
    assert status.enabled and not status.names
    assert status.reason is not None and "damaged" in status.reason
    assert str(path) not in status.reason  # said to clients: no paths
    assert ident.error is not None and str(path) in ident.error
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "damaged" in errors[0].getMessage()
    # Diarization only, even for a voice that was enrolled.
    decision = ident.labeler().label(voice(1), duration_ms=2000)
    assert decision.label == "Speaker 1"
    with pytest.raises(VoiceprintStoreError, match="not enrolling"):
        ident.enroll("Park", None, [voice(2)])
    with pytest.raises(VoiceprintStoreError, match="damaged"):
        ident.remove("Kim")
    assert path.read_text() == "{broken"
    # Repaired (here: removed) -> names again.
    path.unlink()
    assert ident.refresh().names


def test_enroll_creates_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "state" / "v.json"
    identification_at(path).enroll("Kim", None, [voice(1)])
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_track_labels_lazily_and_resets(tmp_path: Path) -> None:
    ident = identification_at(tmp_path / "v.json", max_speakers=2)
    track = ident.track()
    assert track.statistics() == {}
    labels = [track.label(utterance(voice(i), i), duration_ms=2000).label for i in (1, 2, 3)]
    assert labels[:2] == ["Speaker 1", "Speaker 2"]
    assert labels[2] in ("Speaker 1", "Speaker 2")  # max_speakers: the nearest
    assert track.statistics()["forced"] == 1
    track.reset()
    assert track.label(voice(2), duration_ms=2000).label == "Speaker 1"


def test_identification_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        identification_at(tmp_path / "v.json", diarization_threshold=2.0)
    with pytest.raises(ValueError):
        identification_at(tmp_path / "v.json", max_speakers=0)
