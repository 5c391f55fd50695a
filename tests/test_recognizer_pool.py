"""The recogniser pool: warm recognisers reused across streams.

Pure rules with stand-in recognisers; then the real Vosk model, to check that a reused
recogniser's results are on the new stream's clock and that a session after another
gets the warm recogniser through the server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
import trio

from edge.asr.recognizer import Recognizer, RecognizerPool, Reusable
from edge.asr.vosk import LoadedModel
from edge.protocols.events import Utterance
from helpers import FIXTURES, connect, make_token, receive_until_closed, stream

SPEECH = (FIXTURES / "speech_ko.raw").read_bytes()


class StandIn:
    """Counts what is done to it; reusable like VoskRecognizer."""

    def __init__(self, rate: int, phrases: Sequence[str] | None = None) -> None:
        self.sample_rate = rate
        self.phrases = phrases
        self.audio_seconds = 0.0
        self.resets = 0
        self.fail = False

    def accept(self, pcm: bytes) -> list[Utterance]:
        if self.fail:
            raise RuntimeError("injected fault")
        self.audio_seconds += len(pcm) / 2 / self.sample_rate
        return []

    def flush(self) -> Utterance | None:
        return None

    def close(self) -> None:
        pass

    def reset(self) -> None:
        self.resets += 1


class Plain:
    """A recogniser without ``reset``: never pooled."""

    def accept(self, pcm: bytes) -> list[Utterance]:
        return []

    def flush(self) -> Utterance | None:
        return None

    def close(self) -> None:
        pass


class Factory:
    def __init__(self, kind: type = StandIn) -> None:
        self.kind = kind
        self.made: list[Any] = []

    def __call__(self, rate: int, phrases: Sequence[str] | None = None) -> Recognizer:
        made = self.kind(rate, phrases) if self.kind is StandIn else self.kind()
        self.made.append(made)
        return made


def inner(recognizer: Recognizer) -> Any:
    return getattr(recognizer, "inner", recognizer)


def test_a_closed_recogniser_is_reset_and_reused_for_the_same_rate() -> None:
    factory = Factory()
    pool = RecognizerPool(factory, size=2)
    first = pool(16000, None)
    first.accept(bytes(3200))
    first.close()
    assert pool.idle == 1
    second = pool(16000, None)
    assert inner(second) is inner(first) and inner(second).resets == 1
    assert (pool.created, pool.reused, pool.idle) == (1, 1, 0)
    other_rate = pool(8000, None)  # the idle one is busy: a fresh one
    assert inner(other_rate).sample_rate == 8000 and len(factory.made) == 2


def test_an_idle_recogniser_of_another_rate_is_not_used() -> None:
    factory = Factory()
    pool = RecognizerPool(factory, size=4)
    pool(8000, None).close()
    fresh = pool(16000, None)
    assert inner(fresh).sample_rate == 16000 and len(factory.made) == 2
    assert pool.idle == 1  # the 8 kHz one waits for an 8 kHz stream


def test_closing_twice_gives_back_once() -> None:
    pool = RecognizerPool(Factory(), size=4)
    lease = pool(16000, None)
    lease.close()
    lease.close()
    assert pool.idle == 1


def test_grammar_streams_and_unresettable_recognisers_are_never_pooled() -> None:
    factory = Factory()
    pool = RecognizerPool(factory, size=4)
    grammar = pool(16000, ["yes", "no"])
    assert grammar is factory.made[0] and grammar.phrases == ["yes", "no"]
    grammar.close()
    assert pool.idle == 0

    plain_pool = RecognizerPool(Factory(Plain), size=4)
    plain = plain_pool(16000, None)
    assert isinstance(plain, Plain) and not isinstance(plain, Reusable)
    plain.close()
    assert plain_pool.idle == 0


def test_a_recogniser_that_failed_is_dropped() -> None:
    factory = Factory()
    pool = RecognizerPool(factory, size=4)
    lease = pool(16000, None)
    inner(lease).fail = True
    with pytest.raises(RuntimeError):
        lease.accept(bytes(320))
    lease.close()
    assert pool.idle == 0
    assert inner(pool(16000, None)) is not inner(lease)


def test_the_pool_keeps_at_most_size_idle_and_retires_old_recognisers() -> None:
    pool = RecognizerPool(Factory(), size=2, retire_after=1.0)
    leases = [pool(16000, None) for _ in range(3)]
    for lease in leases:
        lease.close()
    assert pool.idle == 2

    worn = pool(16000, None)
    worn.accept(bytes(32000))  # one second: its life's quota
    worn.close()
    assert pool.idle == 1


def test_size_zero_disables_pooling() -> None:
    factory = Factory()
    pool = RecognizerPool(factory, size=0)
    pool(16000, None).close()
    pool(16000, None).close()
    assert len(factory.made) == 2 and pool.idle == 0


# --- the real model --------------------------------------------------------------------


def decode(recognizer: Recognizer) -> list[Utterance]:
    out: list[Utterance] = []
    for i in range(0, len(SPEECH), 3200):
        out += [u for u in recognizer.accept(SPEECH[i:i + 3200]) if u.is_final]
    final = recognizer.flush()
    return out + ([final] if final else [])


def test_a_reused_vosk_recogniser_times_the_new_stream_from_zero(model: LoadedModel
                                                                ) -> None:
    pool = RecognizerPool(model.recognizer, size=1)
    first = pool(16000, None)
    fresh = decode(first)
    first.close()
    second = pool(16000, None)
    assert pool.reused == 1
    warm = decode(second)
    # Word times within a few 30 ms frames of the fresh stream's (recognisers differ
    # by that much on the same audio), not offset by the 9 s decoded before.
    assert len(warm) == len(fresh) == 3
    for a, b in zip(fresh, warm, strict=True):
        assert abs(a.start_ms - b.start_ms) <= 100 and abs(a.end_ms - b.end_ms) <= 100
        assert a.words[0].start_ms == a.start_ms and b.words[0].start_ms == b.start_ms


async def test_the_next_session_gets_the_warm_recogniser(start_server: Any) -> None:
    server = await start_server()
    pool = server.engine.recognizers
    assert isinstance(pool, RecognizerPool)
    results = []
    for _ in range(2):
        async with connect(server, make_token()) as ws:
            await stream(ws, SPEECH)
            await ws.send_message(json.dumps({"type": "end"}))
            messages = await receive_until_closed(ws)
        results.append([m for m in messages
                        if m["type"] == "transcription" and m["is_final"]])
        with trio.fail_after(5):
            while server.admission.current:
                await trio.sleep(0.02)
    assert (pool.created, pool.reused) == (1, 1)
    first, second = results
    assert first and second
    assert abs(first[0]["start_ms"] - second[0]["start_ms"]) <= 100
