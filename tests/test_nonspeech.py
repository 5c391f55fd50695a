"""Words only: the tokens a model uses for non-speech never reach a client or the journal.

Table tests of the rule and of the conversion, the rule against the Korean model's own
word table, and a real session over audio that makes the real model say such tokens.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from speaker_audio import conversation

from edge.asr.modeldir import default_model_path
from edge.asr.nonspeech import is_nonspeech, speech_text, words_only
from edge.asr.recognizer import Recognizer
from edge.asr.vosk import LoadedModel, VoskRecognizer, final_from_json
from edge.journal.db import Journal
from edge.protocols.events import Utterance, Word
from helpers import TEST_KEY, connect, make_token, receive_json, receive_until_closed, stream

BRACKETED = re.compile(r"[\[<!]")


@pytest.mark.parametrize(("token", "nonspeech"), [
    ("[1]", True), ("[5]", True), ("[25]", True), ("[00]", True), ("[일]", True),
    ("[쩜]", True), ("[unk]", True), ("[noise]", True), ("[laughter]", True),
    ("[vocalized-noise]", True), ("<unk>", True), ("<UNK>", True), ("<SPOKEN_NOISE>", True),
    ("<s>", True), ("</s>", True), ("<eps>", True), ("!SIL", True), ("!sil", True),
    (" [1] ", True),
    ("두통", False), ("머리가", False), ("A", False), ("OS", False), ("(백)", False),
    ("$", False), ("%", False), ("[", False), ("[]", False), ("<>", False), ("!", False),
    ("[1]두통", False), ("두통[1]", False), ("[1] [2]", False), ("it's", False),
])
def test_what_is_not_a_word(token: str, nonspeech: bool) -> None:
    assert is_nonspeech(token) is nonspeech


@pytest.mark.parametrize(("text", "expected"), [
    ("수원 스니키 [1] 억여 시즈마", "수원 스니키 억여 시즈마"),
    ("[4] 위 [5] 위에", "위 위에"),
    ("A G [4] 척", "A G 척"),
    ("[1] [2]", ""),
    ("<UNK>", ""),
    ("머리가 아픕니다", "머리가 아픕니다"),
    ("", ""),
])
def test_partial_text_without_nonspeech(text: str, expected: str) -> None:
    assert speech_text(text) == expected


def w(word: str, start: int, end: int, conf: float = 1.0) -> Word:
    return Word(word, start, end, conf)


WORDS = (w("[1]", 100, 300, 0.31), w("수원", 300, 620, 0.9), w("[16]", 620, 900, 0.28),
         w("시즈마", 900, 1400, 0.77), w("[5]", 1400, 1500, 0.8))


def final(words: Sequence[Word], text: str | None = None) -> Utterance:
    return Utterance(is_final=True, text=text or " ".join(x.word for x in words),
                     start_ms=words[0].start_ms if words else 0,
                     end_ms=words[-1].end_ms if words else 0, words=tuple(words),
                     speaker_vector=(0.5, 0.25))


@pytest.mark.parametrize(("words", "kept"), [
    (WORDS, (1, 3)),  # at the start, inside and at the end
    (WORDS[1:4], (0, 2)),
    (WORDS[1:2], (0,)),  # nothing to take out: the same utterance
    (WORDS[0:1], None),  # only non-speech: no final
    ((WORDS[0], WORDS[2], WORDS[4]), None),
])
def test_a_final_keeps_its_words_as_they_were(words: tuple[Word, ...],
                                               kept: tuple[int, ...] | None) -> None:
    result = words_only(final(words))
    if kept is None:
        assert result is None
        return
    assert result is not None
    expected = tuple(words[i] for i in kept)
    assert result.words == expected  # times and confidences unchanged
    assert result.text == " ".join(x.word for x in expected)
    assert (result.start_ms, result.end_ms) == (expected[0].start_ms, expected[-1].end_ms)
    assert result.speaker_vector == (0.5, 0.25) and result.is_final


def test_vosk_results_are_converted_without_nonspeech() -> None:
    raw = json.dumps({"text": "[1] 수원 [16] 시즈마", "result": [
        {"word": "[1]", "start": 0.1, "end": 0.3, "conf": 0.31},
        {"word": "수원", "start": 0.3, "end": 0.62, "conf": 0.9},
        {"word": "[16]", "start": 0.62, "end": 0.9, "conf": 0.28},
        {"word": "시즈마", "start": 0.9, "end": 1.4, "conf": 0.77}]})
    got = final_from_json(raw, fallback_start_ms=0, fallback_end_ms=2000)
    assert got is not None
    assert got.text == "수원 시즈마"
    assert got.words == (w("수원", 300, 620, 0.9), w("시즈마", 900, 1400, 0.77))
    assert (got.start_ms, got.end_ms) == (300, 1400)
    only = json.dumps({"text": "[5]", "result": [
        {"word": "[5]", "start": 0.1, "end": 0.3, "conf": 0.8}]})
    assert final_from_json(only, fallback_start_ms=0, fallback_end_ms=500) is None


def model_words(model_dir: Path) -> list[str]:
    """The model's word table: ``graph/words.txt``, or the output symbol table OpenFst
    keeps inside ``graph/Gr.fst`` (the small models' dynamic graph)."""
    words_txt = model_dir / "graph" / "words.txt"
    if words_txt.exists():
        return [line.split()[0] for line in words_txt.read_text("utf-8").splitlines()]
    with (model_dir / "graph" / "Gr.fst").open("rb") as f:
        data = f.read(32 * 1024 * 1024)

    def string(at: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<i", data, at)
        return data[at + 4:at + 4 + n].decode("utf-8"), at + 4 + n

    magic, at = struct.unpack_from("<I", data)[0], 4
    assert magic == 0x7EB2FDD6  # an OpenFst header
    _, at = string(at)  # fst type
    _, at = string(at)  # arc type
    _, flags = struct.unpack_from("<iI", data, at)
    at += 8 + 32  # version, flags; properties, start, states, arcs
    assert flags & 1, "no symbol table in Gr.fst"
    assert struct.unpack_from("<I", data, at)[0] == 0x7EB2FB74  # a symbol table
    _, at = string(at + 4)
    _, size = struct.unpack_from("<qq", data, at)
    at += 16
    words = []
    for _ in range(size):
        word, at = string(at)
        words.append(word)
        at += 8  # its key
    return words


def test_the_rule_matches_the_korean_models_own_non_speech_symbols() -> None:
    words = model_words(default_model_path())
    assert len(words) > 500_000
    dropped = {x for x in words if is_nonspeech(x)}
    # What the model's table holds besides words: <eps>, <s>, </s>, !SIL, <UNK>,
    # <SPOKEN_NOISE> and 122 bracketed tokens ([0]..[99], [00]..[09], [공] [일] ... [쩜]).
    assert {"<eps>", "<s>", "</s>", "!SIL", "<UNK>", "<SPOKEN_NOISE>", "[1]", "[5]", "[25]",
            "[일]"} <= dropped
    assert sum(x.startswith("[") for x in dropped) == 122
    assert len(dropped) == 128
    # Nothing else of the table has that shape: every other symbol is kept.
    assert all(not BRACKETED.match(x) for x in words if x not in dropped
               and x not in ("!", "<", "["))


class RawRecording(VoskRecognizer):
    """The real recogniser, keeping what Vosk said before it was converted."""

    raw: list[dict[str, Any]]

    def _final(self, raw: str) -> Utterance | None:
        self.raw.append(json.loads(raw))
        return super()._final(raw)

    def _partial(self, raw: str) -> Utterance | None:
        self.raw.append(json.loads(raw))
        return super()._partial(raw)


async def test_a_real_session_never_sees_the_models_nonspeech_tokens(
        start_server: Any, model: LoadedModel, tmp_path: Path) -> None:
    # The conversation's first 12 s: the real model hears "수원 스니키 [16] 억여 시즈마" in
    # the second turn and "... 쥐고 [1] 머리 가 ..." in the third, with Vosk's own
    # endpointer (the device's pause rule would cut the turns elsewhere). What it hears
    # depends on what ran before in the process: two chances, not one.
    audio = conversation()[0][:12_000 * 32]
    recognizers: list[RawRecording] = []

    def factory(rate: int, phrases: Sequence[str] | None) -> Recognizer:
        recognizer = RawRecording(model, rate, phrases)
        recognizer.raw = []
        recognizers.append(recognizer)
        return recognizer

    server = await start_server(recognizer_factory=factory)
    async with connect(server, make_token()) as ws:
        session_id = (await receive_json(ws))["session_id"]
        # the tokens come from the pauses: the recogniser is given them all
        await ws.send_message(json.dumps({"type": "config", "max_turn_silence_ms": 0,
                                          "skip_silence": False}))
        await stream(ws, audio)
        await ws.send_message(json.dumps({"type": "end"}))
        messages = await receive_until_closed(ws)
    (recognizer,) = recognizers
    raw_finals = [r for r in recognizer.raw if r.get("text")]
    said = [x["word"] for r in raw_finals for x in r["result"]]
    assert any(is_nonspeech(x) for x in said), said  # the model did say them

    transcriptions = [m for m in messages if m["type"] == "transcription"]
    finals = [m for m in transcriptions if m["is_final"]]
    assert finals and all(m["text"].strip() for m in transcriptions)
    for m in transcriptions:
        assert not any(is_nonspeech(t) for t in m["text"].split()), m["text"]
    # Each final is Vosk's, with only the non-speech words gone: same times, same
    # confidences (rounded as the Live API sends them).
    expected = [[(x["word"], round(1000 * x["start"]), round(1000 * x["end"]),
                  round(x["conf"], 4)) for x in r["result"] if not is_nonspeech(x["word"])]
                for r in raw_finals]
    got = [[(x["word"], x["start_ms"], x["end_ms"], x["confidence"]) for x in m["words"]]
           for m in finals]
    assert got == [e for e in expected if e]
    for m in finals:
        assert m["text"] == " ".join(x["word"] for x in m["words"])
        assert (m["start_ms"], m["end_ms"]) == (m["words"][0]["start_ms"],
                                                m["words"][-1]["end_ms"])

    def journaled() -> list[dict[str, Any]]:
        with Journal.open(tmp_path / "state" / "journal.db", key=TEST_KEY,
                          device_id="reader", readonly=True) as journal:
            return journal.finals(session_id)

    with trio.fail_after(10):
        stored = await trio.to_thread.run_sync(journaled)
    assert [f["text"] for f in stored] == [m["text"] for m in finals]
    assert not any(is_nonspeech(x["word"]) for f in stored for x in f["words"])
