"""The recognisers' memory budget: the decisions (fakes for RSS and recognisers), and
recycling in a live session and in the room (real model, real sockets, the journal),
forced by a budget of 0 MB: every recogniser is recycled at every pause it reaches."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from test_room import PlayedSource
from trio_websocket import ConnectionRejected

from edge import app
from edge.asr import budget_policy, memory, recycling
from edge.asr.decode import decode_pcm
from edge.asr.memory import IDLE, LIVE, MB, MemoryBudget, RecyclingRecognizer
from edge.audio.pauses import PauseDetector
from edge.audio.source import Chunk, MicEvent
from edge.core.auth import SCOPE_READ
from edge.ops import check, health
from edge.ops import memory as plan
from edge.protocols.events import Utterance
from helpers import FIXTURES, connect, http_get, make_config, make_token, receive_json, stream

SPEECH = FIXTURES / "speech_ko.wav"
RAW = (FIXTURES / "speech_ko.raw").read_bytes()

# --- decisions ------------------------------------------------------------------------


class Readings:
    """RSS readings, one per call: the last one repeats."""

    def __init__(self, *values_mb: int) -> None:
        self.values = [v * MB for v in values_mb]
        self.trims = 0

    def read(self) -> int:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]

    def trim(self) -> bool:
        self.trims += 1
        return True


class IdlePool:
    def __init__(self, idle: int) -> None:
        self.idle = idle
        self.dropped = self.retired = 0
        self.accepts_idle = lambda: True

    def drop_idle(self) -> bool:
        if not self.idle:
            return False
        self.idle -= 1
        return True


class Stub:
    """A stream's recogniser: a final whenever it is flushed, times from its own 0."""

    def __init__(self, rate: int, phrases: Any = None) -> None:
        self.fed = 0
        self.pending = False
        self.closed = self.retired = False
        self.rate = rate

    @property
    def audio_seconds(self) -> float:
        return self.fed / self.rate

    @property
    def at_boundary(self) -> bool:
        return not self.pending

    def accept(self, pcm: bytes) -> list[Utterance]:
        self.fed += len(pcm) // 2
        self.pending = True
        return []

    def flush(self) -> Utterance | None:
        self.pending = False
        end = round(1000 * self.fed / self.rate)
        return Utterance(is_final=True, text="x", start_ms=end - 100, end_ms=end)

    def close(self) -> None:
        self.closed = True

    def retire(self) -> None:
        self.retired = True


def budget(readings: Readings, budget_mb: int = 100, **kwargs: Any) -> MemoryBudget:
    return MemoryBudget(budget_mb, 500 * MB, read=readings.read, trim=readings.trim, **kwargs)


def test_under_the_budget_nothing_is_recycled() -> None:
    b = budget(Readings(590), pool=IdlePool(3))
    b.check()
    assert b.held and b.snapshot().recycles == {"idle": 0, "retired": 0}
    assert b.snapshot().recognizer_bytes == 90 * MB


def test_a_quiet_daemon_reads_its_memory_less_often() -> None:
    clock = [0.0]
    b = budget(Readings(590), clock=lambda: clock[0], prewarm=None)
    assert b.due()  # nothing read yet
    b.check()
    clock[0] += memory.CHECK_INTERVAL
    assert not b.due()  # nothing decoded, nothing marked or freed: the reading holds
    stream = RecyclingRecognizer(Stub, 16000, None, b)
    stream.accept(b"\0" * 3200)  # a stream decodes: it may grow
    assert b.due()
    b.check()
    assert not b.due()
    stream.request_recycle()  # one waits for its pause: watched closely
    assert b.due()
    stream.flush()  # swapped at its final: one freed since the last reading
    assert b.recycles[LIVE] == 1 and b.due()
    b.check()
    assert not b.due()
    clock[0] += memory.QUIET_INTERVAL
    assert b.due()


def test_idle_recognisers_go_first_one_at_a_time_until_under() -> None:
    readings = Readings(700, 650, 580)
    pool = IdlePool(5)
    b = budget(readings, pool=pool)
    live = RecyclingRecognizer(Stub, 16000, None, b)
    live.accept(b"\0" * 32000 * 60)
    b.check()
    assert pool.idle == 3 and readings.trims == 2
    assert b.recycles[IDLE] == 2 and b.held and not live.recycle_requested


def test_then_as_many_live_recognisers_as_needed_are_marked_most_audio_first() -> None:
    b = budget(Readings(700), min_audio=10, prewarm=None)
    young = RecyclingRecognizer(Stub, 16000, None, b)
    old = RecyclingRecognizer(Stub, 16000, None, b)
    fresh = RecyclingRecognizer(Stub, 16000, None, b)
    young.accept(b"\0" * 32000 * 20)
    old.accept(b"\0" * 32000 * 40)
    fresh.accept(b"\0" * 32000 * 1)  # too young even over the budget (10 s / 6)
    b.check()  # 200 MB held of a 100 MB budget: both that may go are marked at once
    assert old.recycle_requested and young.recycle_requested and b.held
    assert not fresh.recycle_requested and b.snapshot().pending == 2
    assert b.refuses(live_sessions=3) is not None  # no room for another growing stream


P = budget_policy.Candidate


@pytest.mark.parametrize(("used", "growth", "replacement", "live", "mark", "held", "near"), [
    # under the high-water mark (400 - 10%: 360): nothing
    (300, 0, 0, [P("a", 100, False)], (), True, False),
    # above the mark, under the budget: the oldest, only those past min_audio (30 s)
    (370, 0, 0, [P("a", 100, False), P("b", 50, False), P("c", 10, False)],
     ("a",), True, True),
    # a replacement's size is headroom too (400 - 90 = 310), and what each recycle gives
    # back is its share less the replacement: 350/3 - 90 = 26 MB each, need 350 - 265
    (350, 0, 90, [P("a", 100, False), P("b", 50, False), P("c", 10, False)],
     ("a", "b"), True, True),
    # over the budget: younger ones too (30 s / 6), as many as it takes
    (450, 0, 90, [P("a", 100, False), P("b", 50, False), P("c", 10, False)],
     ("a", "b", "c"), True, True),
    # what is already marked counts: 450/3 - 90 = 60 MB will come back from a
    (450, 0, 90, [P("a", 100, True), P("b", 50, False), P("c", 10, False)],
     ("b", "c"), True, True),
    # far over, every one old: all marked, and that brings it back under
    (800, 0, 90, [P(k, 100, False) for k in "abcd"], tuple("abcd"), True, True),
    # over, and everyone too young to recycle: not held
    (450, 0, 0, [P("a", 4, False), P("b", 3, False)], (), False, True),
    # recycling would give back nothing (a share smaller than a replacement): no loop
    (380, 0, 300, [P("a", 100, False), P("b", 100, False)], (), True, True),
    # growth 10 MB/s x 8 s of wait + 90: the mark moves down to 230
    (250, 10, 90, [P("a", 100, False), P("b", 100, False)], ("a", "b"), True, True),
    (220, 10, 90, [P("a", 100, False)], (), True, False),
    # headroom never more than half the budget
    (210, 100, 90, [P("a", 100, False)], ("a",), True, True),
    (190, 100, 90, [P("a", 100, False)], (), True, False),
    # nothing live: what is above the model is not the recognisers' to give back
    (450, 0, 0, [], (), True, True),
])
def test_the_policy(used: int, growth: int, replacement: int,
                    live: list[budget_policy.Candidate], mark: tuple[str, ...], held: bool,
                    near: bool) -> None:
    plan = budget_policy.plan(used=used * MB, budget=400 * MB, growth=growth * MB, wait=8.0,
                              replacement=replacement * MB, live=live, min_audio=30.0)
    assert (plan.mark, plan.held, plan.near) == (mark, held, near)
    assert plan.low_water <= plan.high_water <= 400 * MB


def test_the_high_water_mark_follows_the_measured_growth_and_wait() -> None:
    clock = iter(range(100))
    readings = Readings(500, 510, 520, 530, 540, 550)  # +10 MB a second
    b = budget(readings, budget_mb=400, recognizer_mb=0, prewarm=None,
               clock=lambda: float(next(clock)))
    for _ in range(6):
        b.check()
    assert b.growth is not None and 9 * MB < b.growth <= 10 * MB
    assert b.high_water < 400 * MB - 70 * MB  # 8 s of waiting at ~10 MB/s
    b.swapped(2.0, 2.0)
    b.swapped(2.0, 2.0)
    b.check()
    assert b.wait is not None and b.wait < 8 and b.high_water > 400 * MB - 70 * MB


def test_a_budget_that_cannot_be_held_degrades_and_refuses() -> None:
    b = budget(Readings(700), min_audio=60, recognizer_mb=0)
    live = RecyclingRecognizer(Stub, 16000, None, b)
    live.accept(b"\0" * 32000 * 5)  # too young to recycle
    assert b.refuses(live_sessions=1) is None
    b.check()
    assert not b.held and not live.recycle_requested
    why = b.refuses(live_sessions=1)
    assert why is not None and "recognizer.memory_budget_mb" in why
    status, body = health.health(version="t", model="m", sessions=1, max_sessions=8,
                                 clock=health.ClockStatus(True, True),
                                 memory=b.snapshot().status())
    assert status == 503 and body["status"] == "degraded"
    assert body["memory"]["held"] is False and "budget" in body["reasons"][0]


def test_capacity_counts_the_rooms_recogniser() -> None:
    b = budget(Readings(500), budget_mb=1024, recognizer_mb=90, reserved=1)
    assert b.capacity() == 10
    assert b.refuses(live_sessions=9) is None
    assert b.refuses(live_sessions=10) is not None


def test_a_marked_recogniser_is_replaced_only_between_utterances() -> None:
    made: list[Stub] = []

    def factory(rate: int, phrases: Any = None) -> Stub:
        made.append(Stub(rate))
        return made[-1]

    readings = Readings(700)
    b = budget(readings)
    r = RecyclingRecognizer(factory, 16000, None, b)
    r.accept(b"\0" * 32000)  # one second, an utterance in progress
    r.request_recycle()
    r.accept(b"\0" * 16000)
    assert len(made) == 1 and not made[0].retired  # not between utterances yet
    first = r.flush()
    assert first is not None and first.end_ms == 1500
    assert made[0].retired and not made[0].closed and b.recycles[LIVE] == 1
    r.accept(b"\0" * 32000)  # the next audio goes to a new recogniser...
    second = r.flush()
    assert len(made) == 2 and made[1].fed == 16000
    assert second is not None and second.end_ms == 2500  # ...on the stream's clock
    r.close()
    assert made[1].closed and not made[1].retired
    marked = RecyclingRecognizer(factory, 16000, None, b)
    marked.request_recycle()
    marked.accept(b"\0" * 3200)
    marked.close()  # at the end of its stream: freed, the heap trimmed by the next check
    assert made[2].retired and not made[2].closed and b.recycles[LIVE] == 2
    assert b.trim_due
    trims = readings.trims
    b.check()
    assert not b.trim_due and readings.trims == trims + 1


class Supplier:
    """Pre-warmed stubs; :attr:`gate` holds back the warming until set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.made: list[Stub] = []
        self.adopted: list[Stub] = []
        self.offered: list[Stub] = []

    def fresh(self, rate: int, phrases: Any) -> Stub:
        self.gate.wait(10)
        self.made.append(Stub(rate))
        return self.made[-1]

    def adopt(self, recognizer: Stub, phrases: Any) -> Stub:
        self.adopted.append(recognizer)
        return recognizer

    def offer(self, recognizer: Stub, phrases: Any) -> None:
        self.offered.append(recognizer)


def wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def prewarming_stream() -> tuple[Supplier, MemoryBudget, list[Stub], RecyclingRecognizer]:
    """A stream whose replacements are pre-warmed on one second of speech; the stubs
    its factory made (fresh ones) are listed."""
    supplier = Supplier()
    b = budget(Readings(700), prewarm=supplier)
    assert b.prewarmer is not None
    b.prewarmer._speech = (b"\0" * 32000, 16000)  # one second of warm-up speech
    made: list[Stub] = []

    def factory(rate: int, phrases: Any = None) -> Stub:
        made.append(Stub(rate))
        return made[-1]

    return supplier, b, made, RecyclingRecognizer(factory, 16000, None, b)


def test_a_marked_recogniser_is_swapped_for_its_prewarmed_replacement_when_ready() -> None:
    supplier, b, made, r = prewarming_stream()
    assert b.prewarmer is not None
    r.accept(b"\0" * 32000)
    r.request_recycle()
    supplier.gate.set()
    wait_for(lambda: b.prewarmer is not None and b.prewarmer.made == 1)
    warm = supplier.made[0]
    assert warm.fed == 16000 and not warm.pending  # warmed, flushed
    assert r.flush() is not None  # the pause: swapped for the warm one, not a fresh one
    assert supplier.adopted == [warm] and len(made) == 1 and made[0].retired
    r.accept(b"\0" * 16000)
    final = r.flush()
    assert final is not None and final.end_ms == 1000 + 1000 + 500  # its warm-up + stream's
    assert b.snapshot().prewarmed == 1 and b.snapshot().status()["prewarmed"] == 1
    b.prewarmer.close()


def test_a_swap_never_waits_for_a_replacement_still_warming() -> None:
    supplier, b, made, r = prewarming_stream()
    assert b.prewarmer is not None
    r.accept(b"\0" * 32000)
    r.request_recycle()  # the supplier is held back: nothing is ready at the pause
    r.flush()
    r.accept(b"\0" * 16000)
    final = r.flush()
    assert len(made) == 2 and final is not None and final.end_ms == 1500
    assert b.snapshot().prewarmed == 0
    supplier.gate.set()  # the order was cancelled at the swap: nothing is warmed for it
    r.request_recycle()  # the next mark orders again; this stream ends before its pause
    wait_for(lambda: b.prewarmer is not None and b.prewarmer.made == 1)
    r.accept(b"\0" * 3200)
    r.close()
    # back to the pool, not lost (and the cancelled order's, if it was begun)
    assert supplier.offered == supplier.made and len(supplier.made) in (1, 2)
    assert made[1].retired and supplier.adopted == []
    b.prewarmer.close()


def test_the_unit_limits_follow_the_budget_and_fit_a_4_gb_board() -> None:
    default = plan.limits(1024)
    assert default.high_mb == plan.RUNTIME_MB + plan.MODEL_MB + 1024 + plan.SLACK_MB
    assert default.max_mb > default.high_mb
    assert plan.fits(default, plan.board_mem_total_mb(4))
    assert not plan.fits(default, plan.board_mem_total_mb(2))
    two = plan.largest_budget(plan.board_mem_total_mb(2))
    assert 0 < two < 1024 and plan.fits(plan.limits(two), plan.board_mem_total_mb(2))


def test_rss_and_trim_are_read_from_this_process() -> None:
    assert memory.read_rss() > 10 * MB
    assert memory.mem_total() > memory.read_rss()
    assert isinstance(memory.malloc_trim(), bool)


# --- recycling with the real model ------------------------------------------------------


@pytest.fixture
def recycle_at_every_pause(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(memory, "MIN_AUDIO_BEFORE_RECYCLE", 0.0)
    monkeypatch.setattr(memory, "CHECK_INTERVAL", 0.02)
    # The model's share as 0: the test process's RSS is always over a budget of 0 (a
    # malloc_trim can take it below what it was when the daemon started).
    monkeypatch.setattr(app, "read_rss", lambda: 0)
    # At the pauses only: never hurried to a short gap nor forced (tests/test_budget_lag.py
    # tests those).
    plan = budget_policy.plan
    monkeypatch.setattr(budget_policy, "plan", lambda **kw: dataclasses.replace(
        plan(**kw), hurry=(), force=()))
    yield


def assert_continuous(got: list[dict[str, Any]], reference: list[Utterance],
                      end_slack_ms: int = 100) -> None:
    """The same finals at the same times (starts within 100 ms), each after the last."""
    assert len(got) == len(reference), (got, reference)
    for message, ref in zip(got, reference, strict=True):
        assert abs(message["start_ms"] - ref.start_ms) <= 100, (
            [(m["text"], m["start_ms"], m["end_ms"]) for m in got], reference)
        assert abs(message["end_ms"] - ref.end_ms) <= end_slack_ms, (message, ref)
    for before, after in itertools.pairwise(got):
        assert after["start_ms"] >= before["end_ms"]
        assert [w["start_ms"] for w in after["words"]] == sorted(
            w["start_ms"] for w in after["words"])


async def memory_status(server: Any) -> dict[str, Any]:
    _, _, body = await http_get(server.port, "/healthz")
    data: dict[str, Any] = json.loads(body)["memory"]
    return data


async def test_a_live_session_recycles_between_utterances_and_loses_nothing(
    start_server: Any, model: Any, phrases: dict[str, Any], recycle_at_every_pause: None
) -> None:
    server = await start_server(recognizer={"memory_budget_mb": 0,
                                            "recognizer_memory_mb": 0})
    grammar = [p for p in phrases["grammar"] if p != "[unk]"]
    pcm = RAW
    reference = [u for u in await trio.to_thread.run_sync(
        lambda: decode_pcm(model.recognizer(16000, grammar), pcm, 16000,
                           turn_silence_ms=400)) if u.is_final]
    seen = []
    async with connect(server, make_token()) as ws:
        session_id = (await receive_json(ws))["session_id"]
        await ws.send_message(json.dumps({"type": "config", "phrases": grammar}))
        await stream(ws, SPEECH.read_bytes())
        await ws.send_message(json.dumps({"type": "end"}))
        while (message := await receive_json(ws))["type"] != "session_end":
            if message["type"] == "transcription" and message["is_final"]:
                seen.append(message)
    recycled = (await memory_status(server))["recycled"]
    assert recycled.get("live", 0) >= 2  # both pauses between the three utterances
    assert [m["text"] for m in seen] == phrases["utterances"]
    assert_continuous(seen, reference)
    with trio.fail_after(10):
        while (row := server.journal.journal.session(session_id)) is None \
                or row.ended_at is None:
            await trio.sleep(0.05)
    assert server.journal.journal.finals(session_id) == seen  # none lost, none twice


async def test_a_swap_takes_the_replacement_prewarmed_while_the_utterance_went_on(
    start_server: Any, model: Any, phrases: dict[str, Any], recycle_at_every_pause: None,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # One second of the warm-up speech (of 16) keeps the test short; the mechanism is
    # the same: a fresh recogniser from the model, warmed at idle priority.
    monkeypatch.setattr(recycling, "PREWARM_SECONDS", 1.0)
    server = await start_server(recognizer={"memory_budget_mb": 0,
                                            "recognizer_memory_mb": 0},
                                server={"idle_timeout": 600})
    grammar = [p for p in phrases["grammar"] if p != "[unk]"]
    reference = [u for u in await trio.to_thread.run_sync(
        lambda: decode_pcm(model.recognizer(16000, grammar), RAW, 16000,
                           turn_silence_ms=400)) if u.is_final]
    seen = []
    prewarmer = server.engine.memory.prewarmer
    async with connect(server, make_token()) as ws:
        await receive_json(ws)
        await ws.send_message(json.dumps({"type": "config", "phrases": grammar}))
        first = 32000 * 3 // 2  # into the first utterance; its recogniser is marked
        await stream(ws, RAW[:first])
        # At idle priority the replacement may starve while other work keeps the cores
        # busy (by design); the stream waits for it here, never in the daemon.
        with trio.fail_after(300):
            while prewarmer.made < 1:
                await trio.sleep(0.05)
        await stream(ws, RAW[first:])
        await ws.send_message(json.dumps({"type": "end"}))
        while (message := await receive_json(ws))["type"] != "session_end":
            if message["type"] == "transcription" and message["is_final"]:
                seen.append(message)
    status = await memory_status(server)
    assert status["prewarmed"] >= 1 and status["recycled"]["live"] >= 2
    assert [m["text"] for m in seen] == phrases["utterances"]
    assert_continuous(seen, reference)


def utterance_spans(pcm: bytes) -> list[tuple[int, int]]:
    """Where the recording's utterances are (ms): runs of speech frames by energy,
    joined across gaps shorter than a turn's pause."""
    pauses = PauseDetector()
    pauses.feed(pcm, 16000)
    spans: list[tuple[int, int]] = []
    for start, end in pauses.speech:
        if spans and start - spans[-1][1] < 400:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


class RecordingSource(PlayedSource):
    """The speech fixture, then ``silence`` chunks, as fast as the room takes them (a
    recording has no real-time pace, so nothing is dropped however slow the room
    is); :attr:`done` is set once the last chunk is queued."""

    def __init__(self, silence: int) -> None:
        super().__init__()
        self.silence = silence
        self.done = trio.Event()

    async def run(self, send: trio.MemorySendChannel[Chunk | MicEvent], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        pcm = RAW + b"\0" * 3200 * self.silence
        async with send:
            for i in range(0, len(pcm), 3200):
                await send.send(Chunk(pcm[i:i + 3200].ljust(3200, b"\0"), 16000,
                                      trio.current_time()))
                self.chunks += 1
            self.done.set()
            await trio.sleep_forever()


async def test_the_room_recycles_between_utterances_and_loses_nothing(
    nursery: trio.Nursery, start_server: Any, model: Any, recycle_at_every_pause: None
) -> None:
    reference = utterance_spans(RAW)
    assert len(reference) == 3
    # The room's queue holds 50 chunks: once the last is queued, the recording's own
    # 1.2 s of silence after its last word has been decoded, and every turn is closed.
    source = RecordingSource(silence=52)
    server = await start_server(microphone={"enabled": True}, mic=source,
                                recognizer={"memory_budget_mb": 0,
                                            "recognizer_memory_mb": 0},
                                recognizer_factory=model.recognizer)
    got: list[dict[str, Any]] = []
    async with connect(server, make_token(scope=SCOPE_READ), "?source=room") as ws:
        await receive_json(ws)
        with trio.fail_after(150):  # fresh recognisers at every pause: slow on a busy CI
            await source.done.wait()
        while True:  # what the hub has published by now
            with trio.move_on_after(1) as quiet:
                message = await receive_json(ws)
                if message["type"] == "transcription" and message["is_final"]:
                    got.append(message)
            if quiet.cancelled_caught:
                break
    recycled = (await memory_status(server))["recycled"]
    assert recycled.get("live", 0) >= 2
    # Without a grammar a fresh recogniser's first utterance may be worded differently
    # from a warm one's (its online adaptation starts anew): what recycling must keep
    # is every utterance, once, on the room's clock.
    spans = [(m["start_ms"], m["end_ms"]) for m in got]
    assert all(m["text"] for m in got) and spans == sorted(spans)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    assert all(start >= 0 and end <= 1000 * len(RAW) // 32000 + 100 for start, end in spans)
    for ref_start, ref_end in reference:  # each utterance of the recording is in a final
        assert any(start < ref_end and ref_start < end for start, end in spans), (
            spans, reference)
    journal = server.journal.journal
    [segment] = [s for s in journal.sessions() if s.source == "room"]
    def key(m: dict[str, Any]) -> tuple[Any, ...]:
        return m["text"], m["start_ms"], m["end_ms"], m["words"]

    assert [key(m) for m in journal.finals(segment.session_id)] == [key(m) for m in got]


async def test_sessions_the_budget_cannot_hold_are_refused_with_retry_after(
    start_server: Any,
) -> None:
    server = await start_server(recognizer={"memory_budget_mb": 100,
                                            "recognizer_memory_mb": 90})
    async with connect(server, make_token()) as ws:
        await receive_json(ws)
        with pytest.raises(ConnectionRejected) as refused:
            async with connect(server, make_token()):
                pass
        assert refused.value.status_code == 503
        assert dict(refused.value.headers or [])[b"retry-after"] == b"30"
        assert json.loads(refused.value.body or b"{}")["code"] == "memory_budget"
    metrics = (await http_get(server.port, "/metrics"))[2].decode()
    assert "edge_process_resident_bytes " in metrics
    assert 'edge_recognizer_recycled_total{reason="live"} 0' in metrics
    assert 'edge_sessions_refused_total{reason="memory_budget"} 1' in metrics


def test_edge_check_says_whether_the_limits_fit_the_board(tmp_path: Path) -> None:
    config = make_config()
    unit = tmp_path / "edge.service"
    gb = 1024 * MB
    fits = check.check_memory(config, load=False, unit_file=unit, total=4 * gb - 200 * MB)
    assert fits.level == check.OK and "MemoryMax=2202M" in fits.message
    assert "2 GB: budget <= 448 MB" in fits.message
    small = check.check_memory(config, load=False, unit_file=unit, total=2 * gb - 100 * MB)
    assert small.level == check.FAIL and "memory_budget_mb to 448 or less" in small.message
    unit.write_text("[Service]\nMemoryHigh=1000M\nMemoryMax=1200M\n")
    stale = check.check_memory(config, load=False, unit_file=unit, total=4 * gb)
    assert stale.level == check.WARN and "install.sh" in stale.message
    shipped = (Path(__file__).parent.parent / "systemd" / "edge.service").read_text()
    assert plan.limits(1024).unit_lines().splitlines()[1] in shipped.splitlines()
