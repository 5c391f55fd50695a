"""Room capture: the ALSA microphone through PyAudio (PortAudio), as a trio service.

:class:`MicSource` sends :class:`Chunk` items (mono s16le PCM) and :class:`MicEvent`
items (``mic_lost``, ``mic_restored``, ``mic_overrun``, ``mic_paused``,
``mic_resumed``) down one bounded memory channel, in order: an event always comes
before the audio that follows it.

Threads. A device session (initialise PortAudio, resolve the device, open the
stream, read until told to stop, close, terminate) runs start to finish in *one*
worker thread, ``trio.to_thread.run_sync(..., abandon_on_cancel=True)`` under the
source's own ``CapacityLimiter(1)``. The thread posts each chunk to the event loop
(``run_sync_soon``, not waiting: a ``from_thread.run_sync`` round trip cost more CPU
than the rest of an empty room's chunk), the loop side only does ``send_nowait``, so
the microphone never waits for a consumer; between reads the thread polls
``trio.from_thread.check_cancelled()``. Why this shape:

* the event loop never blocks on PortAudio, and a session's thread costs one callback
  on the loop per chunk. At most :data:`_IN_FLIGHT` chunks are on their way, which
  keeps memory bounded: if the loop froze, the thread waits and the device overflows,
  reported (``mic_overrun``, cause ``device``);
* the thread that opened the stream is the one that closes it, so a stream is never
  closed under a read in progress;
* cancellation (shutdown, :meth:`MicSource.pause`) returns at once; the thread
  notices within one read (``chunk_ms``), closes the stream, and ``run`` waits up to
  ``close_timeout`` (shielded) for that close. A read wedged in a driver therefore
  delays shutdown by at most ``close_timeout``. Because the limiter's token is only
  given back when the thread really ends, the next session cannot open the device
  before the previous one has closed it.

Every session initialises PortAudio afresh: PortAudio enumerates devices only when it
initialises, so this is how a microphone plugged in later is found.

Events (``MicEvent.code``, with ``details``):

* ``mic_lost``: opening or reading failed; once per outage, not per retry
  (``retry_in``). Retries follow with exponential backoff.
* ``mic_restored``: capturing again after an outage (``device``, ``sample_rate``,
  ``channels``).
* ``mic_overrun``: audio was dropped, at most once per ``overrun_interval``;
  ``cause`` is ``consumer`` (the channel was full, the chunk was dropped: the
  microphone never waits) or ``device`` (PortAudio reported an input overflow);
  ``dropped_chunks`` and ``overruns`` are the running totals.
* ``mic_paused`` / ``mic_resumed``: :meth:`MicSource.pause` closed the device, and it
  is open again after :meth:`MicSource.resume`.

Format. The source asks for 16 kHz mono s16 (``pa.is_format_supported``); a device
that refuses it is opened at its default rate and/or with 2 or more channels, and the
channels are mixed down with numpy. The rate is *not* converted here: every
:class:`Chunk` says its ``sample_rate`` and ``KaldiRecognizer(model, rate)`` resamples
(the same rule as the rest of edge, see :mod:`edge.audio.frames`), which avoids a second
resampler of lower quality on a small CPU. Note that PortAudio's ALSA host reports
mono as supported even on a PCM that only does stereo (it opens it in stereo and hands
over one channel); pass ``channels=2`` to capture both and average them instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections import deque
from typing import Any

import pyaudio
import trio

from edge.audio.portaudio import (
    MAX_CHANNELS,
    Backend,
    DeviceInfo,
    RealTimePace,
    choose_format,
    downmix,
    initialise,
    list_input_devices,
    resolve,
    resolve_device,
)
from edge.audio.source import (
    MIC_LOST,
    MIC_OVERRUN,
    MIC_PAUSED,
    MIC_RESTORED,
    MIC_RESUMED,
    Chunk,
    MicEvent,
    MicStatistics,
)
from edge.core.backoff import Backoff
from edge.core.errors import AudioSourceError

# Device listing lives with the rest of PortAudio's side; callers also find it here.
__all__ = ["Chunk", "DeviceInfo", "MicEvent", "MicSource", "list_input_devices",
           "resolve_device"]

logger = logging.getLogger(__name__)

_MAX_PENDING_EVENTS = 64
#: Chunks posted by the capture thread and not yet taken by the event loop, at most.
_IN_FLIGHT = 4
# --- the source ------------------------------------------------------------------------

class _Run:
    """One device session's thread, as seen from the event loop."""

    def __init__(self, gen: int, token: trio.lowlevel.TrioToken) -> None:
        self.gen = gen
        self.token = token
        self.started = False  # written by the thread
        self.closed = trio.Event()
        self.in_flight = threading.BoundedSemaphore(_IN_FLIGHT)  # chunks posted, not taken
        self.error: Exception | None = None  # raised taking a posted chunk (a bug)


class MicSource:
    """Captures one input device and sends mono PCM chunks down a bounded channel.

    ``device`` is a :func:`resolve_device` spec, resolved again at every (re)open so a
    replugged USB microphone is found under a new index. ``channels=None`` captures mono
    when the device allows it; an int captures that many channels and averages them.
    ``chunk_ms`` is the read size. A failed open or read is reported once as
    ``mic_lost`` and retried after ``backoff_base`` seconds, doubling up to
    ``backoff_max``; success after a loss sends ``mic_restored``. Dropped chunks and
    device overflows send ``mic_overrun`` at most once per ``overrun_interval``.
    ``backend`` replaces ``pyaudio.PyAudio`` (fault injection in tests).
    """

    def __init__(
        self,
        device: str | int = "default",
        *,
        sample_rate: int = 16000,
        channels: int | None = None,
        chunk_ms: int = 100,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        overrun_interval: float = 5.0,
        close_timeout: float = 2.0,
        backend: Backend = pyaudio.PyAudio,
    ) -> None:
        if channels is not None and not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be between 1 and {MAX_CHANNELS}")
        if chunk_ms <= 0 or backoff_base <= 0 or backoff_max < backoff_base:
            raise ValueError("chunk_ms and backoff_base must be > 0, "
                             "backoff_max >= backoff_base")
        self._spec = device
        self._target_rate = sample_rate
        self._channels_wanted = channels
        self._chunk_ms = chunk_ms
        self._backoff = Backoff(backoff_base, backoff_max)
        self._overrun_interval = overrun_interval
        self._close_timeout = close_timeout
        self._backend = backend
        self._limiter = trio.CapacityLimiter(1)

        self._send: trio.MemorySendChannel[Chunk | MicEvent] | None = None
        self._pending: deque[MicEvent] = deque()
        self._ready: trio.Event | None = None
        self._running = False
        self._paused = False
        self._resuming = False
        self._consumer_gone = False
        self._gen = 0
        self._opened_gen = 0
        self._session_scope: trio.CancelScope | None = None
        self._idle_scope: trio.CancelScope | None = None
        self._last_overrun_event = -math.inf

        self._state = "stopped"
        self._device_name: str | None = None
        self._rate: int | None = None
        self._channels: int | None = None
        self._chunks = 0
        self._dropped = 0
        self._overruns = 0
        self._restarts = 0
        self._failures = 0
        self._last_error: str | None = None
        self._stream_open = False

    # --- public --------------------------------------------------------------------

    async def run(
        self,
        send_channel: trio.MemorySendChannel[Chunk | MicEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Capture until cancelled, or until the consumer closes its receive channel.

        Reports started once the first attempt has settled: the device is open
        (``running``), or it failed and retries are scheduled (``lost``; a missing
        microphone does not stop the daemon), or the source is paused. ``run`` owns
        ``send_channel`` and closes it when it returns. On cancellation it returns
        after the stream is closed, or after ``close_timeout`` if the device hangs.
        """
        if self._running:
            raise RuntimeError("this MicSource is already running")
        self._running = True
        self._send = send_channel
        self._consumer_gone = False
        self._ready = ready = trio.Event()
        try:
            async with send_channel, trio.open_nursery() as nursery:
                nursery.start_soon(self._supervise, send_channel, ready)
                await ready.wait()
                task_status.started()
        finally:
            self._send = None
            self._running = False
            self._state = "stopped"

    def pause(self) -> None:
        """Close the microphone (privacy): no audio is captured until :meth:`resume`.

        Returns at once; no chunk is sent after this returns, and the stream is closed
        within one read (``statistics().stream_open`` turns false). Sends
        ``mic_paused``. Idempotent.
        """
        if self._paused:
            return
        self._paused = True
        self._resuming = False
        if self._running:
            self._state = "paused"
        self._event(MIC_PAUSED, "capture paused: the microphone is closed")
        logger.info("microphone paused")
        self._wake()

    def resume(self) -> None:
        """Reopen the microphone after :meth:`pause`; ``mic_resumed`` follows once the
        stream is open again (or ``mic_lost`` if it cannot be). Idempotent."""
        if not self._paused:
            return
        self._paused = False
        self._resuming = True
        if self._running:
            self._state = "starting"
        logger.info("microphone resumed")
        self._wake()

    def statistics(self) -> MicStatistics:
        return MicStatistics(
            state=self._state,
            device=self._device_name or str(self._spec),
            sample_rate=self._rate,
            channels=self._channels,
            chunks=self._chunks,
            dropped_chunks=self._dropped,
            overruns=self._overruns,
            restarts=self._restarts,
            failures=self._failures,
            last_error=self._last_error,
            stream_open=self._stream_open,
        )

    # --- supervision (event loop) --------------------------------------------------

    async def _supervise(self, send: trio.MemorySendChannel[Chunk | MicEvent],
                         ready: trio.Event) -> None:
        attempt = 0  # retries since the device last captured (or was paused)
        try:
            while not self._consumer_gone:
                if self._paused:
                    self._state = "paused"
                    ready.set()
                    attempt = 0
                    await self._idle(send, math.inf)
                    continue
                if self._state == "stopped":
                    self._state = "starting"
                error: AudioSourceError | None = None
                self._gen += 1
                with trio.CancelScope() as scope:
                    self._session_scope = scope
                    try:
                        await self._session(_Run(self._gen, trio.lowlevel.current_trio_token()))
                    except AudioSourceError as exc:
                        error = exc
                self._session_scope = None
                if self._paused or self._consumer_gone or error is None:
                    continue
                if self._opened_gen == self._gen:
                    attempt = 0  # it was capturing: a new loss, not a retry
                attempt += 1
                # No jitter: mic_lost announces the delay (retry_in).
                delay = self._backoff.delay(attempt, None)
                self._lost(error, delay)
                ready.set()
                await self._idle(send, trio.current_time() + delay)
        finally:
            ready.set()

    async def _session(self, run: _Run) -> None:
        try:
            await trio.to_thread.run_sync(self._capture_blocking, run,
                                          limiter=self._limiter, abandon_on_cancel=True)
        finally:
            if run.started and not run.closed.is_set():
                with trio.move_on_after(self._close_timeout) as waited:
                    waited.shield = True
                    await run.closed.wait()
                if waited.cancelled_caught:
                    logger.warning("the capture device did not close within %gs",
                                   self._close_timeout)

    async def _idle(self, send: trio.MemorySendChannel[Chunk | MicEvent],
                    deadline: float) -> None:
        """Wait until ``deadline`` or pause()/resume(), handing pending events over.

        Nothing is being captured here, so waiting for room in the channel stalls no
        audio; it does let mic_lost/mic_paused reach a consumer that was behind.
        """
        with trio.CancelScope(deadline=deadline) as scope:
            self._idle_scope = scope
            try:
                while self._pending:
                    await send.send(self._pending[0])
                    self._pending.popleft()
                await trio.sleep_forever()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._consumer_gone = True
            finally:
                self._idle_scope = None

    def _wake(self) -> None:
        for scope in (self._session_scope, self._idle_scope):
            if scope is not None:
                scope.cancel()

    def _lost(self, error: AudioSourceError, retry_in: float) -> None:
        self._failures += 1
        self._last_error = str(error)
        self._resuming = False
        if self._state != "lost":
            self._state = "lost"
            self._event(MIC_LOST, f"{error}; retrying", retry_in=retry_in)
            logger.warning("microphone lost: %s; retrying in %gs", error, retry_in)
        else:
            logger.info("microphone still unavailable: %s; retrying in %gs", error, retry_in)

    # --- callbacks from the capture thread (run on the event loop) -----------------

    def _opened(self, gen: int, device: DeviceInfo, rate: int, channels: int) -> None:
        if gen != self._gen:
            return
        self._opened_gen = gen
        self._device_name, self._rate, self._channels = device.name, rate, channels
        if self._paused:
            return  # pause() came while it was opening; the thread is closing it again
        details = {"device": device.name, "sample_rate": rate, "channels": channels}
        if self._state == "lost":
            self._restarts += 1
            self._event(MIC_RESTORED, f"capturing from {device.name!r} again", **details)
            logger.warning("microphone restored: %r", device.name)
        elif self._resuming:
            self._event(MIC_RESUMED, "capture resumed", **details)
        else:
            logger.info("capturing from %r at %d Hz, %d channel(s)", device.name, rate,
                        channels)
        self._resuming = False
        self._state = "running"
        if self._ready is not None:
            self._ready.set()

    def _deliver(self, gen: int, pcm: bytes) -> None:
        """Send one chunk without waiting (``_consumer_gone`` once the consumer went)."""
        if gen != self._gen or self._paused or self._send is None or self._rate is None:
            return  # a stale session or paused: this audio must not go anywhere
        self._flush_events()
        try:
            self._send.send_nowait(Chunk(pcm, self._rate, trio.current_time()))
        except trio.WouldBlock:
            self._dropped += 1
            self._overrun("consumer")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._consumer_gone = True
        else:
            self._chunks += 1

    def _post(self, run: _Run, pcm: bytes) -> bool:
        """(Thread.) Post a chunk, waiting only while :data:`_IN_FLIGHT` are on their
        way; False once the consumer has gone."""
        while not run.in_flight.acquire(timeout=0.1):
            trio.from_thread.check_cancelled()
        if run.error is not None:
            raise run.error
        try:
            run.token.run_sync_soon(self._take_posted, run, pcm)
        except trio.RunFinishedError:
            return False
        return not self._consumer_gone

    def _take_posted(self, run: _Run, pcm: bytes) -> None:
        """(The event loop.) A chunk the capture thread posted."""
        try:
            self._deliver(run.gen, pcm)
        except Exception as exc:  # the thread fails its session with it
            run.error = exc
        finally:
            run.in_flight.release()

    def _input_overflowed(self, gen: int) -> None:
        if gen == self._gen:
            self._overruns += 1
            self._overrun("device")

    # --- events --------------------------------------------------------------------

    def _overrun(self, cause: str) -> None:
        now = trio.current_time()
        if now - self._last_overrun_event < self._overrun_interval:
            return
        self._last_overrun_event = now
        if cause == "consumer":
            text = "audio dropped: the consumer is not keeping up with the microphone"
        else:
            text = "audio lost in the device: input overflow"
        self._event(MIC_OVERRUN, text, cause=cause, dropped_chunks=self._dropped,
                    overruns=self._overruns)
        logger.warning("%s (dropped %d chunks, %d overflows so far)", text, self._dropped,
                       self._overruns)

    def _event(self, code: str, message: str, **details: Any) -> None:
        if len(self._pending) >= _MAX_PENDING_EVENTS:
            logger.warning("microphone event %s not queued: the consumer is not reading",
                           code)
            return
        self._pending.append(MicEvent(code, message, details))
        self._flush_events()

    def _flush_events(self) -> bool:
        """Hand pending events over without waiting; True when none are left."""
        while self._pending and self._send is not None:
            try:
                self._send.send_nowait(self._pending[0])
            except trio.WouldBlock:
                return False
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._consumer_gone = True
                return False
            self._pending.popleft()
        return not self._pending

    # --- the capture thread --------------------------------------------------------

    def _capture_blocking(self, run: _Run) -> None:
        """One device session, start to finish, in a worker thread."""
        run.started = True
        pa: Any = None
        stream: Any = None
        try:
            trio.from_thread.check_cancelled()
            pa = initialise(self._backend)
            device = resolve(pa, self._spec)
            rate, channels = choose_format(pa, device, self._target_rate,
                                           self._channels_wanted)
            frames = max(1, rate * self._chunk_ms // 1000)
            try:
                stream = pa.open(format=pyaudio.paInt16, channels=channels, rate=rate,
                                 input=True, input_device_index=device.index,
                                 frames_per_buffer=frames)
            except (OSError, ValueError) as exc:
                raise AudioSourceError(
                    f"cannot open input device {device.name!r} at {rate} Hz with "
                    f"{channels} channel(s): {exc}") from exc
            self._stream_open = True
            trio.from_thread.run_sync(self._opened, run.gen, device, rate, channels)
            pace = RealTimePace(rate)
            while True:
                trio.from_thread.check_cancelled()
                try:
                    data = stream.read(frames, exception_on_overflow=True)
                except OSError as exc:
                    if exc.errno == pyaudio.paInputOverflowed:
                        # PyAudio discards the chunk it read: the gap is reported.
                        trio.from_thread.run_sync(self._input_overflowed, run.gen)
                        continue
                    raise AudioSourceError(
                        f"reading from input device {device.name!r} failed: {exc}") from exc
                trio.from_thread.check_cancelled()  # paused or stopped during the read
                pace.wait(len(data) // (2 * channels))
                if channels > 1:
                    data = downmix(data, channels)
                if not self._post(run, data):
                    return
        finally:
            try:
                if stream is not None:
                    try:
                        stream.close()
                    except OSError as exc:
                        logger.warning("closing the capture stream failed: %s", exc)
                self._stream_open = False
                if pa is not None:
                    pa.terminate()
            finally:
                with contextlib.suppress(trio.RunFinishedError):  # trio.run is over
                    trio.from_thread.run_sync(run.closed.set, trio_token=run.token)
