"""The start-up warm-up: the pool's warming rules with stand-ins, the low-priority
thread, then the real model: /healthz shows the pool warm up to its target, and a
session that starts while it warms is served (it takes the recogniser being warmed)."""

from __future__ import annotations

import functools
import json
import os
import threading
from pathlib import Path
from typing import Any

import trio
import trio.testing
from conftest import test_auth as auth_for
from prometheus_client.parser import text_string_to_metric_families
from test_recognizer_pool import Factory, StandIn, inner

from edge import app
from edge.app import Parts
from edge.asr.recognizer import RecognizerPool
from edge.asr.vosk import LoadedModel
from edge.asr.warmup import LowPriorityThread, Warmup, pool_target, warmup_speech
from edge.net.server import Server
from helpers import FIXTURES, connect, http_get, make_config, make_token, receive_json, stream


def test_the_pool_size_comes_from_the_memory_budget() -> None:
    assert pool_target(8, 1024, 90) == 8
    assert pool_target(8, 500, 90) == 4  # below the high-water mark: 500 - 90 MB
    assert pool_target(8, 50, 90) == 0
    assert pool_target(3, 1024, 0) == 3


def test_a_stream_takes_the_recogniser_being_warmed_when_none_is_idle() -> None:
    factory = Factory()
    pool = RecognizerPool(factory, size=2)
    warming = pool.begin_warming(16000)
    assert isinstance(warming, StandIn)
    assert pool.warm_slice(warming, bytes(3200)) and warming.audio_seconds > 0
    other_rate = pool(8000, None)  # not the warming one's rate: fresh
    assert inner(other_rate) is not warming
    lease = pool(16000, None)
    assert inner(lease) is warming and pool.taken_warming == 1 and warming.resets == 1
    assert not pool.warm_slice(warming, bytes(3200))  # warm-up stops using it
    assert not pool.end_warming(warming)
    assert pool.held == 2 and pool.warmed == 0
    lease.close()
    other_rate.close()
    assert pool.idle == 2 and pool.lent == 0


def test_a_warmed_recogniser_becomes_idle_and_is_reused() -> None:
    pool = RecognizerPool(Factory(), size=1)
    warming = pool.begin_warming(16000)
    assert warming is not None and pool.end_warming(warming)
    assert (pool.idle, pool.warmed, pool.status()["warming_now"]) == (1, 1, 0)
    lease = pool(16000, None)
    assert inner(lease) is warming and pool.reused == 1
    second = pool.begin_warming(16000)
    assert second is not None
    lease.close()  # the pool is full again: the second one is not needed
    assert pool.end_warming(second) and pool.idle == 1 and pool.warmed == 1


def _task_stat(tid: int) -> tuple[int, int]:
    """(nice, scheduling policy) of one thread, from /proc."""
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16]), int(fields[38])


async def test_the_warm_up_thread_alone_runs_at_the_lowest_priority() -> None:
    thread = LowPriorityThread()
    try:
        with trio.fail_after(10):
            tid = await thread.run(threading.get_native_id)
        nice, policy = _task_stat(tid)
        assert nice == 19 and policy == os.SCHED_IDLE
        own_nice, own_policy = _task_stat(threading.get_native_id())
        assert own_policy == os.SCHED_OTHER and own_nice < 19
        # trio's worker threads are untouched
        worker = await trio.to_thread.run_sync(threading.get_native_id)
        assert _task_stat(worker)[1] == os.SCHED_OTHER
    finally:
        thread.close()


def test_the_warm_up_speech_is_packaged_16_khz_speech() -> None:
    pcm, rate = warmup_speech()
    assert rate == 16000 and len(pcm) / 2 / rate > 5


async def _start(nursery: trio.Nursery, model: LoadedModel, tmp_path: Path,
                 warm: int) -> Server:
    config = make_config(server={"state_dir": str(tmp_path / "state")},
                         recognizer={"warm_recognizers": warm})
    parts = Parts(auth=auth_for(config), model=model, warm_up=True)
    server: Server = await nursery.start(functools.partial(app.run, config, parts=parts))
    return server


async def _health(server: Server) -> dict[str, Any]:
    assert server.port is not None
    status, _, body = await http_get(server.port, "/healthz")
    assert status == 200
    data: dict[str, Any] = json.loads(body)
    return data


async def _wait_warm(server: Server, target: int) -> dict[str, Any]:
    while True:
        pool = (await _health(server))["recognizers"]
        if pool["state"] == "warm" and pool["warm"] >= target:
            return pool
        await trio.sleep(0.2)


async def test_the_pool_warms_up_to_its_target_after_start(model: LoadedModel,
                                                           tmp_path: Path) -> None:
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            server = await _start(nursery, model, tmp_path, warm=2)
            first = (await _health(server))["recognizers"]
            assert first["target"] == 2 and first["state"] in ("waiting", "warming")
            assert first["warm"] < 2
            pool = await _wait_warm(server, 2)
            assert pool["warmed"] == 2 and pool["fresh"] == 0
            assert (await _health(server))["services"]["warmup"]["state"] == "running"
            assert server.port is not None
            _, _, text = await http_get(server.port, "/metrics")
            metrics = {(s.name, tuple(s.labels.items())): s.value
                       for f in text_string_to_metric_families(text.decode())
                       for s in f.samples}
            assert metrics[("edge_recognizers_target", ())] == 2
            assert metrics[("edge_recognizers_idle", ())] == 2
            assert metrics[("edge_recognizers_warmed_total", ())] == 2
            assert metrics[("edge_recognizers_warming", ())] == 0
            nursery.cancel_scope.cancel()


async def test_a_session_during_warming_is_served_at_once(
        model: LoadedModel, tmp_path: Path) -> None:
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            server = await _start(nursery, model, tmp_path, warm=2)
            pool = server.engine.recognizers
            assert isinstance(pool, RecognizerPool)
            while not (await _health(server))["recognizers"]["warming_now"]:
                await trio.sleep(0.05)
            async with connect(server, make_token()) as ws:
                assert (await receive_json(ws))["type"] == "session_init"
                await stream(ws, (FIXTURES / "speech_ko.raw").read_bytes())
                await ws.send_message(json.dumps({"type": "end"}))
                finals = []
                while (message := await receive_json(ws, timeout=60))["type"] != "session_end":
                    if message["type"] == "transcription" and message.get("is_final"):
                        finals.append(message)
            assert finals, "the session got no finals"
            # It took the recogniser being warmed, or (when the slice in progress at idle
            # priority outlasted the quarter second a session waits) a fresh one: never
            # both, never a wait for the warm-up to finish.
            assert pool.taken_warming + pool.created == 1
            warm = await _wait_warm(server, 2)
            assert warm["warm"] == 2 and warm["in_use"] == 0
            nursery.cancel_scope.cancel()


async def test_warming_gives_way_to_a_session_waiting_for_the_limiter() -> None:
    pool = RecognizerPool(Factory(), size=1)
    limiter = trio.CapacityLimiter(1)
    warmup = Warmup(pool, limiter, 1, speech=(bytes(32000), 16000))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await limiter.acquire()  # a session decoding
            nursery.start_soon(warmup.run)
            waiter = trio.Event()

            async def second_session() -> None:
                async with limiter:
                    # warming has not taken the token ahead of this session
                    assert pool.warmed == 0 and pool.status()["warming_now"] == 0
                    waiter.set()

            nursery.start_soon(second_session)
            await trio.testing.wait_all_tasks_blocked()
            limiter.release()
            await waiter.wait()
            while pool.warm_state != "warm":
                await trio.sleep(0.05)
            assert pool.warmed == 1 and pool.idle == 1
            nursery.cancel_scope.cancel()
