"""Warm the recogniser pool after the daemon is ready, before the first patient.

A fresh recogniser of a dynamic-graph model costs about twice the CPU of a warm one
on its first minutes of speech (see :mod:`edge.asr.recognizer`). :class:`Warmup` is a
background service that decodes speech shipped with the package (``data/warmup.wav``,
made by ``tools/make_warmup.sh``) in new recognisers, one at a time, and hands each
to the pool, until the pool holds ``target`` of them.

It never competes with a session:

* it decodes in its own thread, at the lowest CPU priority the kernel offers
  (``SCHED_IDLE`` and nice 19; on Linux both are per thread), never in trio's
  worker threads (a thread cannot raise its priority back without CAP_SYS_NICE);
* it takes a token of the decoding limiter only when one is free and no session waits
  for one, and holds it for one slice of 100 ms of audio;
* a session that finds no idle recogniser takes the one being warmed (waiting a
  quarter of a second at most for the slice in progress), partly warm being better
  than fresh.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import wave
from collections.abc import Callable
from importlib import resources
from typing import Any

import outcome
import trio

from edge.asr.budget_policy import headroom
from edge.asr.recognizer import RecognizerPool

logger = logging.getLogger(__name__)

SLICE_SECONDS = 0.1
_BUSY_POLL = 0.05  # seconds between looks at a busy limiter
_WARM_POLL = 5.0  # seconds between looks at a pool already warm


def warmup_speech() -> tuple[bytes, int]:
    """The packaged warm-up speech: (mono s16le PCM, sample rate). Blocking (a read)."""
    with resources.files("edge.asr").joinpath("data/warmup.wav").open("rb") as f, \
            wave.open(f) as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError("warmup.wav must be mono 16-bit")
        return w.readframes(w.getnframes()), w.getframerate()


def pool_target(warm_recognizers: int, memory_budget_mb: int, recognizer_mb: int) -> int:
    """How many warm recognisers the pool keeps: ``warm_recognizers``, fewer if the
    memory budget's high-water mark (:func:`edge.asr.budget_policy.headroom` with
    nothing growing) does not hold that many (``recognizer_mb`` each): above it idle
    recognisers are dropped, so a pool filled past it would be warmed and dropped in
    turn."""
    if recognizer_mb <= 0:
        return warm_recognizers
    room = memory_budget_mb - headroom(memory_budget_mb, 0.0, 0.0, recognizer_mb)
    return max(0, min(warm_recognizers, room // recognizer_mb))


def lower_this_threads_priority() -> None:
    """Put the calling thread at the lowest CPU priority (Linux: per thread)."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            logger.debug("SCHED_IDLE refused: %s", exc)
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError as exc:
        logger.debug("nice 19 refused: %s", exc)


class LowPriorityThread:
    """One daemon thread at the lowest CPU priority, running blocking calls for trio.

    :meth:`run` returns at once when cancelled: the call goes on in the thread and its
    result is dropped. At the lowest priority a slice can starve for as long as other
    work keeps the cores busy, and a graceful stop must not wait for it. That is safe:
    the pool serialises every use of the recogniser being warmed (its warm lock), and a
    daemon thread does not hold the process open.
    """

    def __init__(self, name: str = "edge-warmup") -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._name = name
        self.native_id: int | None = None

    def _main(self) -> None:
        lower_this_threads_priority()
        self.native_id = threading.get_native_id()
        while (job := self._jobs.get()) is not None:
            job()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        result: list[outcome.Outcome[Any]] = []

        def job() -> None:
            result.append(outcome.capture(fn, *args))
            token.run_sync_soon(done.set)

        self._jobs.put(job)
        await done.wait()
        return result[0].unwrap()

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None


class Warmup:
    """The warm-up service (``async run``, started under the supervisor).

    ``state``: ``waiting`` (before the first recogniser, or while the recognisers are
    over their memory budget), ``warming``, ``warm`` (the pool holds ``target``),
    ``off`` (target 0 or recognisers that cannot be pooled).
    """

    def __init__(self, pool: RecognizerPool, limiter: trio.CapacityLimiter, target: int,
                 speech: tuple[bytes, int] | None = None) -> None:
        self.pool = pool
        self.limiter = limiter
        self.target = min(target, pool.size)
        self._speech = speech
        pool.warm_target = self.target
        self.state = "waiting" if self.target > 0 else "off"
        self.thread = LowPriorityThread()

    @property
    def state(self) -> str:
        return self.pool.warm_state

    @state.setter
    def state(self, value: str) -> None:
        self.pool.warm_state = value

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        if self.target <= 0:
            return
        try:
            if self._speech is None:
                self._speech = await trio.to_thread.run_sync(warmup_speech)
            pcm, rate = self._speech
            step = 2 * max(1, int(rate * SLICE_SECONDS))
            while True:
                if self.pool.held >= self.target:
                    self.state = "warm"
                    await trio.sleep(_WARM_POLL)
                    continue
                if not self.pool.accepts_idle():  # over the memory budget: not now
                    self.state = "waiting"
                    await trio.sleep(_WARM_POLL)
                    continue
                self.state = "warming"
                if not await self._warm_one(pcm, rate, step):
                    self.state = "off"
                    logger.info("recognisers cannot be pooled: no warm-up")
                    return
        finally:
            self.thread.close()

    async def _warm_one(self, pcm: bytes, rate: int, step: int) -> bool:
        recognizer = await self._in_turn(self.pool.begin_warming, rate)
        if recognizer is None:
            return False
        try:
            for i in range(0, len(pcm), step):
                if not await self._in_turn(self.pool.warm_slice, recognizer, pcm[i:i + step]):
                    logger.debug("a session took the recogniser being warmed")
                    return True
            if await self._in_turn(self.pool.end_warming, recognizer):
                logger.info("recogniser warmed: %d of %d warm", self.pool.idle, self.target)
        finally:
            self.pool.abandon_warming(recognizer)
        return True

    async def _in_turn(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the low-priority thread holding a limiter token, taken only
        when one is free and no session waits for one."""
        while True:
            stats = self.limiter.statistics()
            if stats.tasks_waiting == 0 and self.limiter.available_tokens >= 1:
                try:
                    self.limiter.acquire_nowait()
                except trio.WouldBlock:
                    pass
                else:
                    break
            await trio.sleep(_BUSY_POLL)
        try:
            return await self.thread.run(fn, *args)
        finally:
            self.limiter.release()
