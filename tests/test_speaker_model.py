"""Loading the speaker model, labelling in the recogniser's thread, the room's
diarization per segment, and `edge check` on speaker settings. Real Vosk."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
from speaker_audio import GRAMMAR, SPK_MODEL, conversation, turn_of

from edge.asr.recognizer import LabelingRecognizer
from edge.asr.vosk import LoadedModel, load_speaker_model
from edge.audio.source import Chunk, MicEvent, MicStatistics
from edge.core.errors import RecognizerError
from edge.core.stats import Stats
from edge.net.hub import Hub
from edge.net.room import Room
from edge.ops.check import check_speaker_model, check_voiceprints
from edge.protocols.events import RoomState, Utterance
from edge.speakers import SpeakerIdentification, VoiceprintStore
from helpers import FIXTURES, TEST_KEY, make_config

# --- loading -------------------------------------------------------------------------------

def test_load_speaker_model() -> None:
    spk = load_speaker_model(SPK_MODEL)
    assert (spk.name, spk.sample_rate, spk.allow_upsample) == ("spk-model", 16000, True)
    assert spk.min_stream_rate == 0
    assert "model=" not in repr(spk)


def broken_copy(tmp_path: Path, edit: Any) -> Path:
    path = tmp_path / "spk"
    shutil.copytree(SPK_MODEL, path)
    edit(path)
    return path


def a_file(path: Path) -> Path:
    path.write_text("")
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "absent", "does not exist"),
    (lambda tmp: a_file(tmp / "file"), "is not a directory"),
    (lambda tmp: broken_copy(tmp, lambda p: (p / "mean.vec").unlink()),
     "is not a Vosk speaker model: mean.vec missing"),
    (lambda tmp: broken_copy(tmp, lambda p: (p / "final.ext.raw").write_text("<Nnet3> junk")),
     "cannot load the speaker model"),
])
def test_a_missing_or_broken_speaker_model_is_one_line(tmp_path: Path, make: Any,
                                                       message: str) -> None:
    with pytest.raises(RecognizerError) as info:
        load_speaker_model(make(tmp_path))
    text = str(info.value)
    assert message in text and "\n" not in text


def test_slow_streams_without_upsampling_get_no_vectors_and_do_not_fail(
        model: LoadedModel, tmp_path: Path) -> None:
    # Without --allow-upsample (as in some published models) Vosk fails every result of
    # an 8 kHz stream once a speaker model is set; such streams go without vectors.
    path = broken_copy(tmp_path, lambda p: (p / "mfcc.conf").write_text(
        (SPK_MODEL / "mfcc.conf").read_text().replace("--allow-upsample=true\n", "")))
    spk = load_speaker_model(path)
    assert not spk.allow_upsample and spk.min_stream_rate == 16000
    served = model.with_speaker_model(spk)
    pcm = pcm_of_8k()
    rec = served.recognizer(8000)
    finals = [u for i in range(0, len(pcm), 1600) for u in rec.accept(pcm[i:i + 1600])
              if u.is_final]
    assert finals and all(u.speaker_vector is None for u in finals)
    assert getattr(rec, "speaker_vectors", None) is False
    # 16 kHz streams keep theirs.
    audio, _ = conversation(["kim"])
    rec = served.recognizer(16000)
    finals = [u for i in range(0, len(audio), 3200) for u in rec.accept(audio[i:i + 3200])
              if u.is_final]
    assert finals and all(u.speaker_vector is not None for u in finals)


def pcm_of_8k() -> bytes:
    import wave

    with wave.open(str(FIXTURES / "speech_ko_8k.wav"), "rb") as w:
        return w.readframes(w.getnframes())


# --- labelling in the recogniser -------------------------------------------------------------

def test_labeling_recognizer_labels_finals_in_its_own_call(model: LoadedModel,
                                                           tmp_path: Path) -> None:
    served = model.with_speaker_model(load_speaker_model(SPK_MODEL))
    ident = SpeakerIdentification(VoiceprintStore(tmp_path / "v.json", key=TEST_KEY))
    rec = LabelingRecognizer(served.recognizer(16000, GRAMMAR), ident.track())
    audio, turns = conversation(["kim", "park"])
    out = [u for i in range(0, len(audio), 3200) for u in rec.accept(audio[i:i + 3200])]
    last = rec.flush()
    out += [last] if last is not None else []
    assert all(u.speaker is None for u in out if not u.is_final)
    labelled = [(turn_of(turns, u.start_ms, u.end_ms).speaker, u.speaker.label)
                for u in out if u.is_final and u.speaker is not None]
    assert labelled and all(label == ("Speaker 1" if who == "kim" else "Speaker 2")
                            for who, label in labelled), labelled


# --- the room --------------------------------------------------------------------------------

class FastSource:
    """Plays rounds of PCM in 100 ms chunks as fast as the room takes them, the
    microphone paused after each round (which ends the room's segment)."""

    def __init__(self, *rounds: bytes) -> None:
        self.rounds = rounds

    async def run(self, send: trio.MemorySendChannel[Chunk | MicEvent], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with send:
            for n, pcm in enumerate(self.rounds):
                if n:
                    await send.send(MicEvent("mic_resumed", "test: resumed"))
                for i in range(0, len(pcm), 3200):
                    await send.send(Chunk(pcm[i:i + 3200], 16000, trio.current_time()))
                await send.send(MicEvent("mic_paused", "test: paused"))
            await trio.sleep_forever()

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def statistics(self) -> MicStatistics:
        return MicStatistics(state="running", device="fast", sample_rate=16000, channels=1,
                             chunks=0, dropped_chunks=0, overruns=0, restarts=0,
                             failures=0, last_error=None, stream_open=True)


async def test_the_room_diarizes_each_segment(model: LoadedModel, tmp_path: Path) -> None:
    audio, turns = conversation(["kim", "park"])
    served = model.with_speaker_model(load_speaker_model(SPK_MODEL))
    ident = SpeakerIdentification(VoiceprintStore(tmp_path / "v.json", key=TEST_KEY))
    config = make_config(microphone={"enabled": True})

    def recognizer(rate: int, phrases: Any) -> Any:
        # The conversation's words as the grammar (free dictation runs the turns of
        # these synthetic voices together).
        return served.recognizer(rate, GRAMMAR)

    # Kim speaks first in the first segment, Park in the second.
    cut_ms = turns[1].start_ms - 200
    assert (turns[0].speaker, turns[1].speaker) == ("kim", "park")
    room = Room(config, FastSource(audio, audio[cut_ms * 32:]), Hub(), recognizer,
                trio.CapacityLimiter(2), Stats(), speakers=ident)
    rounds: list[list[Utterance]] = [[]]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(room.run)
            with room.hub.subscribe(None, queue_size=10_000) as listener:
                async for published in listener:
                    event = published.event
                    if isinstance(event, RoomState) and event.state == "paused":
                        if len(rounds) == 2:
                            break
                        rounds.append([])
                    elif isinstance(event, Utterance) and event.is_final:
                        rounds[-1].append(event)
            nursery.cancel_scope.cancel()
    # Room times run on across segments: the second round starts at the first's end.
    for finals, shift, first in [(rounds[0], 0, "kim"),
                                 (rounds[1], len(audio) // 32 - cut_ms, "park")]:
        labelled = [(turn_of(turns, f.start_ms - shift, f.end_ms - shift).speaker,
                     f.speaker.label) for f in finals
                    if f.speaker is not None and f.speaker.label is not None]
        assert len(labelled) >= len(turns) - 1
        # Each segment starts again at Speaker 1, with the segment's first voice.
        assert all(label == ("Speaker 1" if who == first else "Speaker 2")
                   for who, label in labelled), labelled


# --- edge check ------------------------------------------------------------------------------

def test_check_reports_the_speaker_model(tmp_path: Path) -> None:
    off = check_speaker_model(make_config())
    assert off.level == "ok" and "no speaker model" in off.message
    good = check_speaker_model(make_config(recognizer={"speaker_model": str(SPK_MODEL)}))
    assert good.level == "ok" and "spk-model loads" in good.message
    bad = check_speaker_model(make_config(recognizer={"speaker_model": str(tmp_path)}))
    assert bad.level == "FAIL" and "final.ext.raw" in bad.message
    unloaded = check_speaker_model(make_config(recognizer={"speaker_model": str(SPK_MODEL)}),
                                   load=False)
    assert unloaded.level == "ok" and "not loaded" in unloaded.message


def test_check_reports_the_voiceprints(tmp_path: Path) -> None:
    config = make_config(recognizer={"speaker_model": str(SPK_MODEL)},
                         server={"state_dir": str(tmp_path)})
    assert "none enrolled" in check_voiceprints(config).message
    SpeakerIdentification(VoiceprintStore(tmp_path / "voiceprints.json", key=TEST_KEY)).enroll(
        "Kim", None, [[1.0, 0.0]])
    finding = check_voiceprints(config)
    assert finding.level == "ok" and finding.message.startswith("1 enrolled speaker(s)")
    (tmp_path / "voiceprints.json").write_text("[]")
    finding = check_voiceprints(config)
    assert finding.level == "warn" and "damaged" in finding.message
