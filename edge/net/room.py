"""The room stream: one microphone, one recogniser, every listener.

:class:`Room` consumes the :class:`~edge.audio.capture.MicSource`'s chunks and events,
decodes the audio in a worker thread (one recogniser for the room) and publishes core
events (results, warnings, its state) to a :class:`~edge.net.hub.Hub` that fans them out
to listeners, each of which encodes them in its dialect. The microphone never waits
for recognition: the source drops chunks (and says ``mic_overrun``) when the room falls
behind.

The room's stream is cut into *segments*: a capture run (until the microphone is lost
or paused), cut again every ``journal.room_segment_seconds``. Each segment is a journal
session and, with a speaker model, a diarization of its own ("Speaker 1" starts again),
so that labels never link voices across a pause or across hours.

The room runs under the daemon's supervisor: when it fails (its recogniser raised, say)
the failed run's segment is closed, listeners see ``room_state`` ``restarting``, and the
next run starts a new segment. The hub and its listeners outlive the runs; the hub
closes only when the daemon stops, after :meth:`Room.stop` has published the final of
the speech in progress.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import trio

from edge.asr.decode import accept_each, flush_turn, through_gate
from edge.asr.recognizer import LabelingRecognizer, Recognizer, RecognizerFactory
from edge.audio.frames import LevelMeter
from edge.audio.pauses import TurnEnd
from edge.audio.source import Chunk, MicEvent, Source
from edge.core.config import Config
from edge.core.stats import ResultFilter, Stats
from edge.journal.service import JournalService
from edge.net.hub import Hub
from edge.protocols import live as protocol
from edge.protocols.events import Notice, RoomState, Utterance
from edge.speakers import SpeakerIdentification

logger = logging.getLogger(__name__)

_QUEUE_CHUNKS = 50  # 5 s of 100 ms chunks between capture and recognition

_MIC_WARNINGS = {"mic_lost", "mic_overrun"}
_MIC_STATES = {"mic_lost": "mic_lost", "mic_restored": "listening", "mic_paused": "paused",
               "mic_resumed": "listening"}
_LEVEL_TEXT = {
    "clipping": "the room microphone is clipping; lower its gain",
    "silence": "the room microphone hears nothing; check that it is connected and unmuted",
}


class Room:
    """Start with ``await nursery.start(room.run)``; listeners use :attr:`hub`.

    ``source`` is the microphone (a :class:`~edge.audio.capture.MicSource`; stand-ins
    in tests) and ``hub`` the fan-out its messages go to; the caller builds both.
    ``language`` and ``model_name``: the room's model's (``microphone.language``'s),
    journaled with each segment.
    """

    def __init__(self, config: Config, source: Source, hub: Hub,
                 recognizer_factory: RecognizerFactory, limiter: trio.CapacityLimiter,
                 stats: Stats, *, journal: JournalService | None = None,
                 speakers: SpeakerIdentification | None = None,
                 language: str | None = None, model_name: str | None = None) -> None:
        self.id = str(uuid.uuid4())
        self.hub = hub
        self.source = source
        self.state = "starting"
        self._stopping = False
        self._running = False
        self._stop_scope = trio.CancelScope()
        self._factory = recognizer_factory
        self._limiter = limiter
        self._stats = stats
        self._results = ResultFilter(stats, config.recognizer.partial_results)
        a = config.audio
        self._meter = LevelMeter(a.silence_seconds, a.silence_dbfs, a.clipping_ratio,
                                 a.warning_interval)
        self._recognizer: Recognizer | None = None
        self._rate: int | None = None
        self._offset_ms = 0  # room audio decoded by earlier recognisers
        self._audio_ms = 0.0  # room audio decoded so far
        self._journal = journal
        # What the room's segments are journaled with (None: the journal's defaults).
        self._language, self._model_name = language, model_name
        self._segment: str | None = None  # the current segment (its journal session id)
        self._segment_started = 0.0
        self._segment_wall = 0.0  # its start on the wall clock, for the journal
        self._segment_journaled = False  # its start is in the journal
        self._segment_seconds = config.journal.room_segment_seconds
        self._speakers = speakers.track() if speakers is not None else None
        self._turn = TurnEnd(config.recognizer.endpoint_silence_ms,
                             config.recognizer.skip_silence)

    async def run(self, *, task_status: trio.TaskStatus[Room] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Capture and recognise until :meth:`stop` or cancellation; ready once capture
        has started. May be run again after it raised (see the module's docstring)."""
        send, receive = trio.open_memory_channel[Chunk | MicEvent](_QUEUE_CHUNKS)
        self._stop_scope = trio.CancelScope()
        if self._stopping:
            self._stop_scope.cancel()
        outcome = "stopped"
        self._running = True
        try:
            with self._stop_scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.source.run, send)
                    if self.state in ("starting", "restarting"):
                        self._set_state(_initial_state(self.source.statistics().state))
                    task_status.started(self)
                    async with receive:
                        async for item in receive:
                            # A stop lands between items, never inside one: the finals
                            # a chunk produced are published and journaled together.
                            with trio.CancelScope(shield=True):
                                if isinstance(item, MicEvent):
                                    await self._on_event(item)
                                else:
                                    await self._on_chunk(item)
            if self._stopping:
                outcome = "shutdown"
        except Exception:
            outcome = "restarting"
            raise
        finally:
            self._running = False
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._wind_up(outcome)

    def stop(self) -> None:
        """Stop capturing; the speech already heard is finalised (published and
        journaled), the segment ends with ``shutdown``, and the hub closes, so that
        listeners end after the room's last final."""
        self._stopping = True
        self._stop_scope.cancel()
        if not self._running:  # between runs (restarting after a failure): nothing to
            self.hub.close()   # finalise, and no run will close the hub

    async def _wind_up(self, outcome: str) -> None:
        if outcome == "restarting":
            # The recogniser may be what failed: its state is unknown, it is not flushed.
            recognizer, self._recognizer = self._recognizer, None
            if recognizer is not None:
                recognizer.close()
            self._offset_ms = round(self._audio_ms)
            self._set_state("restarting")
        elif outcome == "shutdown":
            await self._flush()
        await self._end_segment(outcome)
        if outcome != "restarting":
            self.hub.close()

    def pause(self) -> None:
        """Stop capturing (the device is closed: privacy). Listeners see ``paused``."""
        self.source.pause()

    def resume(self) -> None:
        self.source.resume()

    def status(self) -> dict[str, Any]:
        """For ``/healthz``: state and device, no audio and no text."""
        mic = self.source.statistics()
        hub = self.hub.statistics()
        return {"state": self.state, "device": mic.device, "sample_rate": mic.sample_rate,
                "listeners": hub.listeners, "last_seq": hub.last_seq,
                "dropped_chunks": mic.dropped_chunks, "restarts": mic.restarts}

    # --- events and audio ----------------------------------------------------------

    async def _on_event(self, event: MicEvent) -> None:
        if event.code in ("mic_lost", "mic_paused"):
            await self._flush()  # speech in progress becomes a final
            await self._end_segment(event.code.removeprefix("mic_"))
        if event.code in _MIC_WARNINGS:
            self._stats.count_warning(event.code)
            self.hub.publish(Notice(self.id, event.code, event.message, event.details))
        if event.code in _MIC_STATES:
            self._set_state(_MIC_STATES[event.code])

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        logger.info("room %s: %s", self.id, state)
        self.hub.publish(RoomState(state))

    async def _on_chunk(self, chunk: Chunk) -> None:
        if self.state == "starting":
            self._set_state("listening")
        if (self._segment is not None
                and trio.current_time() - self._segment_started >= self._segment_seconds):
            # Cut before decoding, so that every final's speaker label and journal session
            # belong to the same segment.
            await self._end_segment("segment")
        if self._recognizer is None or chunk.sample_rate != self._rate:
            await self._flush()
            self._rate = chunk.sample_rate
            recognizer = await trio.to_thread.run_sync(
                self._factory, chunk.sample_rate, None, limiter=self._limiter)
            if self._speakers is not None:
                recognizer = LabelingRecognizer(recognizer, self._speakers)
            self._recognizer = recognizer
            # on the new recogniser's clock
            self._turn = TurnEnd(self._turn.silence_ms, self._turn.gate.enabled)
        for code in self._meter.feed(chunk.pcm, chunk.sample_rate):
            self._stats.count_warning(code)
            self.hub.publish(Notice(self.id, code, _LEVEL_TEXT[code]))
        started = trio.current_time()
        parts = [chunk.pcm]
        if not self._turn.gate.is_open:  # the empty room is left out here, no hop
            parts = through_gate(self._turn, parts, chunk.sample_rate)
        results = await trio.to_thread.run_sync(
            accept_each, self._recognizer, parts, self._turn, chunk.sample_rate,
            limiter=self._limiter) if parts else []
        seconds = len(chunk.pcm) / 2 / chunk.sample_rate
        self._stats.observe_decode(seconds, trio.current_time() - started)
        self._audio_ms += 1000 * seconds
        for utterance in results:
            await self._publish(utterance, chunk.t)

    async def _flush(self) -> None:
        """End the current recogniser's stream: its last final, then a fresh clock offset."""
        recognizer, self._recognizer = self._recognizer, None
        if recognizer is None:
            return
        try:
            final = await trio.to_thread.run_sync(flush_turn, recognizer, self._turn,
                                                  limiter=self._limiter)
        finally:
            recognizer.close()
        if final is not None:
            await self._publish(final, None)
        self._offset_ms = round(self._audio_ms)

    async def _publish(self, utterance: Utterance, received: float | None) -> None:
        latency = None if received is None else trio.current_time() - received
        if not self._results.admit(utterance.is_final, utterance.text, latency):
            return
        shifted = utterance.later(self._offset_ms)
        if utterance.is_final:
            if self._segment is None:
                await self._start_segment()
            if self._journal is not None:
                # The journal keeps every final as the Live API's transcription message.
                await self._journal_final(protocol.transcription(self.id, 0, shifted))
        self.hub.publish(shifted)

    async def _start_segment(self) -> None:
        """A segment starts with its first final (a journal session per segment, so that
        retention can expire the room's transcripts piece by piece)."""
        self._segment, self._segment_started = str(uuid.uuid4()), trio.current_time()
        self._segment_wall, self._segment_journaled = time.time(), False
        if self._journal is not None:
            self._segment_journaled = await self._journal_start()

    async def _journal_start(self) -> bool:
        assert self._journal is not None and self._segment is not None
        return await self._journal.start_session(
            self._segment, None, source="room", started_at=self._segment_wall,
            model=self._model_name, language=self._language)

    async def _journal_final(self, message: dict[str, Any]) -> None:
        """Journal a final of the segment (its start first, if that failed before: once
        the disk has room again, the rest of the segment is kept); every listener gets
        ``journal_error`` when it could not be."""
        assert self._journal is not None and self._segment is not None
        if not self._segment_journaled:
            self._segment_journaled = await self._journal_start()
        if not (self._segment_journaled
                and await self._journal.append_final(self._segment, message)):
            self._stats.count_warning("journal_error")
            self.hub.publish(Notice(self.id, "journal_error",
                                    "a room final could not be saved on the device"))

    async def _end_segment(self, reason: str) -> None:
        segment, self._segment = self._segment, None
        if self._speakers is not None:
            # Safe here: the room awaits every recogniser call, so none is running.
            self._speakers.reset()
        if segment is not None and self._journal is not None and self._segment_journaled:
            await self._journal.end_session(segment, reason)


def _initial_state(mic_state: str) -> str:
    return {"running": "listening", "paused": "paused", "lost": "mic_lost"}.get(mic_state,
                                                                               mic_state)
