"""The fan-out hub: bounded queues, slow listeners dropped, replay with since_seq."""

from __future__ import annotations

import inspect
import random
from typing import Any

import pytest
import trio
import trio.testing

from edge.net.hub import HUB_CLOSED, SLOW_LISTENER, UNSUBSCRIBED, Hub, Listener, Published
from edge.protocols.events import Notice, RoomState, Utterance
from edge.protocols.live import room_message


def final(text: str = "x") -> Utterance:
    return Utterance(True, text, 0, 10)


def partial(text: str = "x") -> Utterance:
    return Utterance(False, text, 0, 10)


def warning(code: str = "clipping") -> Notice:
    return Notice("room", code, "...")


def wire(published: Published) -> dict[str, Any]:
    """What a Live API listener ``L`` of room ``R`` is sent for ``published``."""
    return room_message("L", "R", published.seq, published.event)


async def drain(listener: Listener, count: int) -> list[dict[str, Any]]:
    """The next ``count`` messages, as a Live API listener gets them (fails if they do
    not come)."""
    with trio.fail_after(5):
        return [wire(await listener.receive()) for _ in range(count)]


def nothing_queued(listener: Listener) -> bool:
    return listener.queued == 0


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_publish_numbers_messages_and_never_awaits() -> None:
    hub = Hub()
    assert not inspect.iscoroutinefunction(hub.publish)
    messages = [final("a"), partial("b"), warning()]
    assert [hub.publish(m) for m in messages] == [1, 2, 3]
    stats = hub.statistics()
    assert (stats.published, stats.last_seq, stats.listeners) == (3, 3, 0)
    assert stats.buffer_len == 2  # the partial is not kept for replay


async def test_fan_out_to_several_listeners_in_order() -> None:
    hub = Hub()
    listeners = [hub.subscribe() for _ in range(5)]
    published = [final(str(i)) if i % 3 else partial(str(i)) for i in range(50)]
    for message in published:
        hub.publish(message)
    for listener in listeners:
        got = [await listener.receive() for _ in range(50)]
        assert [m.seq for m in got] == list(range(1, 51))
        # The events themselves, shared by every listener; each encodes them its way.
        assert all(a.event is b for a, b in zip(got, published, strict=True))
        assert nothing_queued(listener)
    assert hub.statistics().listeners == 5


async def test_slow_listener_is_dropped_and_does_not_delay_others(
        mock_clock: trio.testing.MockClock) -> None:
    hub = Hub()
    stuck = hub.subscribe(queue_size=4)  # never reads
    received: list[tuple[int, float]] = []
    published_at: dict[int, float] = {}

    async def fast_reader(listener: Listener) -> None:
        async for message in listener:
            received.append((message.seq or 0, trio.current_time()))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            fast = hub.subscribe(queue_size=4)
            nursery.start_soon(fast_reader, fast)
            for i in range(20):
                seq = hub.publish(final(str(i)))
                published_at[seq] = trio.current_time()
                await trio.sleep(0.1)
            hub.close()

    # The reader got every message at the very moment it was published.
    assert [seq for seq, _ in received] == list(range(1, 21))
    assert all(t == published_at[seq] for seq, t in received)
    assert fast.dropped_reason == HUB_CLOSED
    # The stuck one was dropped on the 5th message; what it had queued is still readable.
    assert stuck.dropped_reason == SLOW_LISTENER
    assert [m.seq async for m in stuck] == [1, 2, 3, 4]
    assert hub.statistics().dropped_slow == 1


async def test_a_full_listener_never_blocks_the_publisher() -> None:
    hub = Hub()
    stuck = [hub.subscribe(queue_size=1) for _ in range(10)]
    reader = hub.subscribe(queue_size=1000)
    for i in range(500):  # synchronous: no checkpoint in between, nobody reads
        hub.publish(final(str(i)))
    assert all(listener.dropped_reason == SLOW_LISTENER for listener in stuck)
    assert reader.dropped_reason is None
    assert [m["seq"] for m in await drain(reader, 500)] == list(range(1, 501))
    stats = hub.statistics()
    assert (stats.listeners, stats.dropped_slow) == (1, 10)


async def test_resume_from_a_seq_still_in_the_buffer() -> None:
    hub = Hub(replay_size=100)
    for i in range(10):
        hub.publish(final(str(i)))
    listener = hub.subscribe(since_seq=6)
    hub.publish(final("live"))
    got = await drain(listener, 5)
    assert [m["seq"] for m in got] == [7, 8, 9, 10, 11]
    assert got[-1]["text"] == "live"
    assert all(m["type"] == "transcription" for m in got)  # no warning: nothing lost
    # since_seq=None: live only.
    live = hub.subscribe()
    assert nothing_queued(live)


async def test_resume_from_a_seq_too_old_warns_how_many_were_lost() -> None:
    hub = Hub(replay_size=5)
    for i in range(12):
        hub.publish(final(str(i)))  # the buffer keeps seqs 8..12
    assert hub.statistics().buffer_len == 5
    listener = hub.subscribe(since_seq=3)
    first, *rest = await drain(listener, 6)
    assert first["type"] == "warning"
    assert first["code"] == "missed_messages"
    assert first["lost"] == 4  # seqs 4, 5, 6, 7
    assert "seq" not in first
    assert [m["seq"] for m in rest] == [8, 9, 10, 11, 12]

    from_start = hub.subscribe(since_seq=0)
    warning_message = (await drain(from_start, 1))[0]
    assert warning_message["lost"] == 7
    assert hub.statistics().evicted == 7


async def test_partials_are_not_replayed_nor_counted_as_lost() -> None:
    hub = Hub(replay_size=2)
    for message in [partial(), final(), partial(), final(), warning(), partial(), final()]:
        hub.publish(message)  # seqs 1..7; the buffer keeps 5 (warning) and 7 (final)

    def seqs(messages: list[dict[str, Any]]) -> list[Any]:
        return [m.get("seq", m.get("code")) for m in messages]

    after_2 = hub.subscribe(since_seq=2)
    got = await drain(after_2, 3)
    assert seqs(got) == ["missed_messages", 5, 7]
    assert got[0]["lost"] == 1  # the final with seq 4; the partials do not count
    after_4 = hub.subscribe(since_seq=4)
    assert seqs(await drain(after_4, 2)) == [5, 7]
    assert nothing_queued(after_4)
    after_5 = hub.subscribe(since_seq=5)
    assert seqs(await drain(after_5, 1)) == [7]
    assert nothing_queued(after_5)


async def test_replay_can_be_overridden_per_message() -> None:
    hub = Hub()
    hub.publish(RoomState("listening"), replay=False)
    hub.publish(partial("kept"), replay=True)
    got = await drain(hub.subscribe(since_seq=0), 1)
    assert [(m["seq"], m["text"]) for m in got] == [(2, "kept")]


async def test_since_seq_ahead_of_the_stream_replays_everything_with_a_warning() -> None:
    hub = Hub(replay_size=3)
    for i in range(5):
        hub.publish(final(str(i)))
    listener = hub.subscribe(since_seq=1000)  # a client of a previous daemon run
    got = await drain(listener, 4)
    assert got[0]["code"] == "stream_reset"
    assert got[0]["lost"] == 2
    assert [m["seq"] for m in got[1:]] == [3, 4, 5]


async def test_no_gap_or_duplicate_across_the_replay_live_boundary() -> None:
    rng = random.Random(7)
    hub = Hub(replay_size=40)
    total = 600
    replayable: set[int] = set()
    results: list[tuple[int | None, int, list[dict[str, Any]]]] = []

    async def resume_later(since: int | None, delay_steps: int) -> None:
        for _ in range(delay_steps):
            await trio.lowlevel.checkpoint()
        last = hub.statistics().last_seq
        with hub.subscribe(since_seq=since, queue_size=total) as listener:
            got = []
            async for message in listener:
                got.append(wire(message))
        results.append((since, last, got))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(60):
                since = rng.choice([None, 0, rng.randrange(0, 400)])
                nursery.start_soon(resume_later, since, rng.randrange(0, 500))
            for _ in range(total):
                message = partial() if rng.random() < 0.5 else final()
                seq = hub.publish(message)
                if message.is_final:
                    replayable.add(seq)
                await trio.lowlevel.checkpoint()
            hub.close()

    assert len(results) == 60
    cases: set[str] = set()
    for since, last, got in results:
        seqs = [m["seq"] for m in got if "seq" in m]
        live = list(range(last + 1, total + 1))
        kept_then = sorted(s for s in replayable if s <= last)
        buffered, evicted = kept_then[-40:], kept_then[:-40]
        warnings = [(m["code"], m["lost"]) for m in got if "seq" not in m]
        if since is None:
            assert seqs == live
            assert warnings == []
            cases.add("live only")
        elif since > last:  # a seq this stream has not reached: replay everything
            assert seqs == buffered + live
            assert warnings == [("stream_reset", len(evicted))]
            cases.add("reset")
        else:
            assert seqs == [s for s in buffered if s > since] + live, (since, last)
            lost = sum(1 for s in evicted if s > since)
            assert warnings == ([("missed_messages", lost)] if lost else [])
            cases.add("lost" if lost else "replayed")
    # The random schedule did exercise every kind of resume.
    assert cases == {"live only", "reset", "lost", "replayed"}


async def test_a_hundred_listeners() -> None:
    hub = Hub()
    counts: list[int] = []

    async def listen(listener: Listener) -> None:
        seqs = [m.seq async for m in listener]
        assert seqs == list(range(1, 201))
        counts.append(len(seqs))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(listen, hub.subscribe(queue_size=64))
            assert hub.statistics().listeners == 100
            for i in range(200):
                hub.publish(final(str(i)) if i % 2 else partial(str(i)))
                if i % 50 == 0:  # let them read now and then; 64 slots suffice
                    await trio.testing.wait_all_tasks_blocked()
            hub.close()
    assert counts == [200] * 100
    stats = hub.statistics()
    assert (stats.listeners, stats.dropped_slow, stats.published) == (0, 0, 200)


async def test_close_ends_every_listener_and_refuses_more() -> None:
    hub = Hub()
    listener = hub.subscribe()
    hub.publish(final("before close"))
    hub.close()
    hub.close()  # idempotent
    assert [wire(m)["text"] async for m in listener] == ["before close"]
    assert listener.dropped_reason == HUB_CLOSED
    with pytest.raises(trio.ClosedResourceError):
        hub.publish(final())
    with pytest.raises(trio.ClosedResourceError):
        hub.subscribe()


async def test_leaving_the_with_block_unsubscribes() -> None:
    hub = Hub()
    with hub.subscribe() as listener:
        hub.publish(final())
        assert hub.statistics().listeners == 1
    assert hub.statistics().listeners == 0
    assert listener.dropped_reason == UNSUBSCRIBED
    hub.publish(final())  # nobody to offer it to; nothing breaks
    assert [m async for m in listener] == []
    assert hub.statistics().dropped_slow == 0


async def test_lost_count_stays_exact_over_many_evictions() -> None:
    hub = Hub(replay_size=1)
    for i in range(3000):
        hub.publish(final(str(i)))  # seqs 1..2999 evicted, 3000 buffered
    assert hub.statistics().evicted == 2999

    async def lost(since: int) -> int:
        first = (await drain(hub.subscribe(since_seq=since), 1))[0]
        return int(first.get("lost", 0))

    assert await lost(0) == 2999
    assert await lost(2500) == 499
    assert await lost(2999) == 0
    # Older than the eviction log (the last 512..1024 evictions): every eviction counts,
    # an upper bound (documented in Hub._lost_after).
    assert await lost(100) == 2999


def test_each_listener_encodes_the_events_for_itself() -> None:
    said = wire(Published(3, final("안녕")))
    assert {k: said[k] for k in ("type", "session_id", "room_id", "seq", "text", "is_final")} \
        == {"type": "transcription", "session_id": "L", "room_id": "R", "seq": 3,
            "text": "안녕", "is_final": True}
    assert wire(Published(4, RoomState("paused"))) == {
        "type": "room_state", "session_id": "L", "state": "paused", "seq": 4, "room_id": "R"}
    assert wire(Published(None, Notice("", "missed_messages", "m", {"lost": 2}))) == {
        "type": "warning", "session_id": "L", "code": "missed_messages", "message": "m",
        "lost": 2, "room_id": "R"}
