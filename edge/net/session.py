"""The session core: one client streaming its own audio, whatever protocol carries it.

Frames become events and events become frames in the session's *dialect* (the Live
API's :class:`~edge.protocols.live.LiveDialect`, or a peer protocol's); everything
else (audio decoding, the recogniser, speaker labels, the journal, limits, warnings,
the end of the session) is here and the same for every dialect.

A session runs four kinds of work in one nursery:

* the *receiver* reads client frames, decodes audio and queues it (bounded: when the
  recogniser falls behind, the receiver stops reading and TCP pushes back on the
  client; nothing is dropped);
* the *recogniser loop* feeds queued audio to Vosk in a worker thread and turns
  results into ``transcription`` messages;
* the *watchdogs* enforce the idle timeout, the maximum session length, token expiry
  and keepalive pings;
* the *sender* is the only task that writes to the socket, each send bounded by
  ``server.send_timeout`` so a client that stops reading cannot hold the session.

Finals are labelled by speaker in the recogniser's thread (:class:`~edge.asr.recognizer.
LabelingRecognizer`); ``?enroll=NAME`` enrols at the end (:mod:`edge.net.enrolment`);
before its audio, a client may choose another language (:mod:`edge.net.session_model`).
A session takes its recogniser at its first speech (the silence gate's onset).

Every way a session ends goes through :meth:`Session.stop`, which records why (the first
reason wins) and closes the audio queue; the recogniser loop then flushes (or not), the
closing message is queued, and the sender closes the socket with its close code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any

import trio

from edge.asr.decode import accept_each, flush_turn, through_gate
from edge.asr.recognizer import LabelingRecognizer, Recognizer, RecognizerFactory
from edge.audio.frames import LevelMeter, PcmDecoder
from edge.audio.pauses import TurnEnd
from edge.core.auth import SCOPE_READ
from edge.core.close_codes import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
)
from edge.core.config import Config
from edge.core.errors import ProtocolError, Refusal
from edge.core.stats import ResultFilter, Stats
from edge.journal.service import JournalService
from edge.net.audio_queue import FORCE_ENDPOINT, AudioQueue
from edge.net.channel import Channel, ChannelClosed
from edge.net.connection import Connection, SessionInfo, Stop
from edge.net.enrolment import Enrolment
from edge.net.pacing import MessageRate, RecognitionLag
from edge.net.session_model import SessionModel
from edge.protocols import live as protocol
from edge.protocols.events import (
    Audio,
    Configure,
    Described,
    Dialect,
    End,
    Enrolled,
    Flushed,
    ForceEndpoint,
    KeepAlive,
    Progress,
    Reply,
    Result,
    SessionDescription,
    Started,
    Utterance,
)
from edge.speakers import SpeakerIdentification

logger = logging.getLogger(__name__)

#: Most audio handed to the recogniser in one call, and the most a closed gate is given
#: on the event loop (a longer client frame goes through it in the worker thread).
_BATCH_SECONDS = 1

_WARNING_TEXT = {
    "clipping": "the audio is clipping (samples at full scale); lower the input gain",
    "silence": "no sound above the silence level; check the microphone",
}


class Session(Connection):
    """Runs one accepted WebSocket until it ends; never raises for client behaviour.

    The caller owns ``ws`` (it accepted it) and keeps ownership: :meth:`run` sends the
    close frame when the session ends, and the caller closes whatever is left.
    Exceptions other than the client's doing propagate, for the connection boundary
    to turn into a 1011 close.
    """

    def __init__(
        self,
        channel: Channel,
        info: SessionInfo,
        config: Config,
        recognizer_factory: RecognizerFactory,
        limiter: trio.CapacityLimiter,
        stats: Stats,
        journal: JournalService | None = None,
        *,
        speakers: SpeakerIdentification | None = None,
        enroll: tuple[str, str | None] | None = None,
        dialect: Dialect | None = None,
        dialect_name: str = "live",
        phrases: tuple[str, ...] | None = None,
        configure: Configure | None = None,
        model: SessionModel | None = None,
    ) -> None:
        super().__init__(channel, info, config, stats, dialect)
        self.dialect_name = dialect_name
        self._journal = journal
        self._journaled = False  # the start is in the journal (its finals can follow)
        self._wall_started = time.time()
        self._speakers = speakers
        self._enrolment = (Enrolment(speakers, *enroll)
                           if speakers is not None and enroll is not None else None)
        # Its lease is released when the session ends. Without one: these recognisers only.
        self._model = model or SessionModel(info.model_name, info.language,
                                            recognizer_factory)
        self._limiter = limiter
        self._decoder = PcmDecoder(config.recognizer.sample_rate, info.declared_rate)
        a = config.audio
        self._meter = LevelMeter(a.silence_seconds, a.silence_dbfs, a.clipping_ratio,
                                 a.warning_interval)
        self._phrases = phrases
        self._every_frame = self.dialect.answers_every_frame
        self._partial = ""  # the text of the utterance in progress
        # recognizer.endpoint_silence_ms, until the client sets its own; 0: off
        self._turn = TurnEnd(config.recognizer.endpoint_silence_ms,
                             config.recognizer.skip_silence)
        self._idle_timeout = config.server.idle_timeout
        self._initial = configure  # applied once Started is queued
        self._results = ResultFilter(stats, config.recognizer.partial_results)
        self._send_transcripts = info.claims.has_scope(SCOPE_READ)
        self._audio = AudioQueue()
        self._seq = 0
        self._finals = 0
        self._audio_bytes = 0  # mono s16 bytes received
        self._lag = RecognitionLag(config.recognizer.lag_warning,
                                   config.audio.warning_interval)
        self._last_audio = self._started
        self._messages = MessageRate(info.claims.rate_limit)

    # --- lifecycle -----------------------------------------------------------------

    async def run(self) -> Stop:
        """Serve the session to its end; returns why it ended.

        The session is journaled before ``session_init`` goes out, each final before
        it is sent, and the end however the session ends (shielded from cancellation
        for a few seconds; a daemon killed outright marks it ``interrupted`` at its
        next start).
        """
        if self._journal is not None:
            await self._journal_start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender)
                self._send(Started(self.id, self._description()))
                if self._initial is not None:
                    await self._configure(self._initial)
                async with trio.open_nursery() as inner:
                    inner.start_soon(self._receiver)
                    inner.start_soon(self._watchdogs)
                    await self._recognize()
                    inner.cancel_scope.cancel()
                if self._enrolment is not None and self._stop is not None \
                        and self._stop.reason == "end":
                    await self._enroll_voice(self._enrolment)
                self._finish()  # the audio queue only closes through stop(): _stop is set
        finally:
            self._model.release()
            if self._journal is not None and self._journaled:
                reason = self._stop.reason if self._stop else "internal_error"
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._journal.end_session(self.id, reason)
        assert self._stop is not None
        return self._stop

    def _on_stop(self, stop: Stop) -> None:
        self._audio.close()

    async def _journal_start(self) -> bool:
        """Journal the session's start, its model and language; tried again at each final
        until it is in (once the disk has room again, the rest of the session is kept)."""
        assert self._journal is not None
        self._journaled = await self._journal.start_session(
            self.id, self.info.claims, source="client", dialect=self.dialect_name,
            started_at=self._wall_started, model=self.info.model_name,
            language=self.info.language)
        return self._journaled

    async def _journal_final(self, utterance: Utterance) -> bool:
        """Journal a final (numbered ``self._seq``); False if it could not be."""
        assert self._journal is not None
        if not self._journaled and not await self._journal_start():
            return False
        return await self._journal.append_final(
            self.id, protocol.transcription(self.id, self._seq, utterance))

    # --- receiving -----------------------------------------------------------------

    async def _receiver(self) -> None:
        while self._stop is None:
            try:
                message = await self.channel.receive()
            except ChannelClosed as exc:
                code = exc.code
                # trio-websocket itself closes with 1009 on an oversized frame. Either
                # way, the audio already received is still decoded (flush) so that the
                # session ends complete on the server's side.
                reason = "frame_too_big" if code == CLOSE_TOO_BIG else "client_closed"
                self.stop(Stop(code or CLOSE_GOING_AWAY, reason, notify=False))
                return
            now = trio.current_time()
            self._last_client_message = now
            if self._stop is not None:
                return  # stopped while this message was on its way
            if not self._messages.allows(now):
                limit = self.info.claims.rate_limit
                self.stop(Stop(CLOSE_TRY_AGAIN_LATER, "rate_limited", (
                    "rate_limited", f"more than {limit} messages per minute")))
                return
            try:
                event = self.dialect.parse(message)
                if isinstance(event, Audio):
                    await self._on_audio(event.data)
                elif isinstance(event, End):
                    self.stop(Stop(CLOSE_NORMAL, "end"))
                elif isinstance(event, Configure):
                    await self._configure(event)
                elif isinstance(event, KeepAlive):
                    self._last_audio = trio.current_time()  # a deliberate pause is not idle
                elif isinstance(event, ForceEndpoint):
                    # In order with the audio before it: the recogniser loop finalises.
                    await self._audio.put(FORCE_ENDPOINT, now)
                elif isinstance(event, Reply):
                    for frame in event.frames:
                        self._put(frame)
            except ProtocolError as exc:
                if exc.code == "bad_message":  # a malformed control message is not fatal
                    self._warn("bad_message", exc.message)
                    continue
                self.stop(Stop(exc.close_code, exc.code, (exc.code, exc.message), flush=True))
                return
            except trio.ClosedResourceError:
                return  # stopped while waiting for room in the audio queue

    async def _on_audio(self, frame: bytes) -> None:
        pcm, notices = self._decoder.feed(frame)
        for notice in notices:
            self._warn(notice.code, notice.message)
        fmt = self._decoder.format
        if not pcm or fmt is None:
            if self._every_frame:  # a frame with no samples (a header) is answered too
                await self._audio.put(b"", trio.current_time())
            return
        self._last_audio = trio.current_time()
        for code in self._meter.feed(pcm, fmt.sample_rate):
            self._warn(code, _WARNING_TEXT[code])
        self._audio_bytes += len(pcm)
        await self._audio.put(pcm, self._last_audio)

    async def _configure(self, message: Configure) -> None:
        if message.language is None:
            self._apply_settings(message)
            return
        chosen = await self._choose_model(message.language)
        if chosen is None:
            return
        rest = dataclasses.replace(message, language=None)
        if rest != Configure():
            self._apply_settings(rest)
        if chosen:  # after the rest of its config: the description as it now is
            self._send(Described(self.id, self._description()))

    def _apply_settings(self, message: Configure) -> None:
        if message.idle_timeout_s is not None:
            self._idle_timeout = message.idle_timeout_s
        if message.max_turn_silence_ms is not None:
            self._turn.silence_ms = message.max_turn_silence_ms
        if message.skip_silence is not None:
            self._turn.gate.enabled = message.skip_silence
        anytime = Configure(max_turn_silence_ms=message.max_turn_silence_ms,
                            idle_timeout_s=message.idle_timeout_s,
                            skip_silence=message.skip_silence)
        if message == anytime and anytime != Configure():
            return  # endpointing and the idle timeout may change at any time
        if self._decoder.format is not None:
            self._warn("bad_message", "config must be sent before the first audio frame; "
                       "ignored")
            return
        if message.phrases is not None:
            self._phrases = message.phrases
        if message.sample_rate is not None:
            self._decoder = PcmDecoder(self._cfg.recognizer.sample_rate, message.sample_rate)
        if message.partial_results is not None:
            self._results.partials = message.partial_results

    async def _choose_model(self, asked: str) -> bool | None:
        """A client's choice of language (or model). Before the audio, the session runs
        on it from now on: True (the client is to be told). After, its own language is
        no change (False); another is refused with a warning, and a language before
        the audio that cannot be had ends the session: None, the config is not applied."""
        model = self._model
        if self._decoder.format is not None:  # the audio is the model's it started on
            with contextlib.suppress(Refusal):
                if model.resolve(asked) == model.language:
                    return False
            self._warn("bad_message", f"the language is chosen before the first audio "
                       f"frame; this session stays in {model.language} ({model.name}); "
                       "config ignored")
            return None
        try:
            await model.choose(asked)
        except Refusal as exc:
            self.stop(Stop(exc.close_code, exc.code, (exc.code, exc.message), flush=False))
            return None
        self.info.model_name, self.info.language = model.name, model.language
        if self._journal is not None and self._journaled:  # else journaled so when it can be
            await self._journal.describe_session(self.id, model=model.name, language=model.language)
        self._last_audio = trio.current_time()  # a model loading is no idle client
        return True

    # --- recognising ---------------------------------------------------------------

    async def _recognize(self) -> None:
        recognizer: Recognizer | None = None
        try:
            async with self._audio:
                while True:
                    try:
                        pcm, received = await self._audio.get()
                    except trio.EndOfChannel:
                        break
                    if self._stop is not None and not self._stop.flush:
                        break
                    if pcm is FORCE_ENDPOINT:
                        if recognizer is not None:
                            await self._endpoint(recognizer)
                        self._send(Flushed(self.id))
                        continue
                    if not pcm:  # a frame without samples, answered in its turn
                        self._send(Progress(self.id, self._partial))
                        continue
                    # Behind: the chunks already queued go in one worker-thread hop.
                    parts = [pcm] if self._every_frame else self._audio.take_more(
                        pcm, 2 * self._rate * _BATCH_SECONDS)
                    seconds = sum(map(len, parts)) / 2 / self._rate
                    started = trio.current_time()
                    if not self._turn.gate.is_open and seconds <= _BATCH_SECONDS:
                        parts = through_gate(self._turn, parts, self._rate)  # no hop
                    results: list[Utterance] = []
                    if parts:
                        if recognizer is None:  # none until the first speech
                            recognizer = await self._open_recognizer()
                        results = await trio.to_thread.run_sync(
                            accept_each, recognizer, parts, self._turn, self._rate,
                            trio.from_thread.check_cancelled, limiter=self._limiter)
                    now = trio.current_time()
                    self._stats.observe_decode(seconds, now - started)
                    if (lag := self._lag.late(seconds, received, now)) is not None:
                        self._warn("realtime_lag", "recognition is behind the audio "
                                   "received; results are delayed, nothing is dropped",
                                   lag_ms=round(1000 * lag))
                    for utterance in results:
                        await self._emit(utterance, received)
                    if self._every_frame:
                        self._send(Progress(self.id, self._partial))
                    if self._audio.drained:
                        self._lag.caught_up()
            if recognizer is not None and (self._stop is None or self._stop.flush):
                final = await trio.to_thread.run_sync(flush_turn, recognizer, self._turn,
                                                      limiter=self._limiter)
                if final is not None:
                    await self._emit(final, None)
        finally:
            # No worker thread holds it now: to_thread calls are not abandoned.
            if recognizer is not None:
                recognizer.close()

    async def _endpoint(self, recognizer: Recognizer) -> None:
        """Finalise the utterance in progress now; the stream goes on."""
        final = await trio.to_thread.run_sync(flush_turn, recognizer, self._turn,
                                              limiter=self._limiter)
        if final is not None:
            await self._emit(final, None)
        self._partial = ""

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio received so far (at the rate it was decoded at)."""
        return self._audio_bytes / (2 * self._rate)

    @property
    def _rate(self) -> int:
        fmt = self._decoder.format
        return fmt.sample_rate if fmt else self._cfg.recognizer.sample_rate

    async def _open_recognizer(self) -> Recognizer:
        rate, phrases = self._rate, self._phrases
        recognizer = await trio.to_thread.run_sync(self._model.recognizers, rate, phrases,
                                                   limiter=self._limiter)
        if self._speakers is not None:
            recognizer = LabelingRecognizer(recognizer, self._speakers.track())
        return recognizer

    async def _enroll_voice(self, enrolment: Enrolment) -> None:
        """Enrol the session's speaker (:class:`~edge.net.enrolment.Enrolment`): the
        client gets ``enrolled`` before ``session_end``, or an ``enrollment_failed``
        warning saying why not; either way the session ends normally."""
        enrolled = await enrolment.enrol(self.id, self._warn)
        if enrolled is not None:
            self._send(Enrolled(self.id, *enrolled))

    @property
    def enrolment(self) -> tuple[str, str, str | None] | None:
        """(name, audit outcome, reason) of the enrolment tried at the end, if any."""
        return self._enrolment.outcome if self._enrolment is not None else None

    async def _emit(self, utterance: Utterance, received: float | None) -> None:
        """Number, journal (finals) and queue a result; ``received``: when its audio came."""
        latency = None if received is None else trio.current_time() - received
        self._partial = "" if utterance.is_final else utterance.text
        if not self._results.admit(utterance.is_final, utterance.text, latency):
            return
        if utterance.is_final:
            self._finals += 1
            if self._enrolment is not None:
                self._enrolment.keep(utterance)
        self._seq += 1
        if (utterance.is_final and self._journal is not None
                and not await self._journal_final(utterance)):
            self._warn("journal_error", "this final could not be saved on the device; "
                       "keep your own copy")
        if self._send_transcripts:
            self._send(Result(self.id, self._seq, utterance))

    # --- watchdogs -----------------------------------------------------------------

    async def _watchdogs(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._idle_and_length)
            nursery.start_soon(self._token_expiry)
            nursery.start_soon(self._keepalive)

    async def _idle_and_length(self) -> None:
        s = self._cfg.server
        deadline_length = self._started + s.max_session_seconds
        while True:
            idle_deadline = self._last_audio + self._idle_timeout
            await trio.sleep_until(min(idle_deadline, deadline_length))
            now = trio.current_time()
            if now >= deadline_length:
                self.stop(Stop(CLOSE_POLICY, "max_session_length", (
                    "session_too_long",
                    f"sessions are limited to {s.max_session_seconds:g} seconds; reconnect "
                    "to continue")))
                return
            if now >= self._last_audio + self._idle_timeout:
                self.stop(Stop(CLOSE_GOING_AWAY, "idle", (
                    "idle_timeout",
                    f"no audio or keepalive for {self._idle_timeout:g} seconds")))
                return

    # --- messages ------------------------------------------------------------------

    def _description(self) -> SessionDescription:
        info, claims, cfg = self.info, self.info.claims, self._cfg
        return SessionDescription(
            model=info.model_name, sample_rate=info.declared_rate or info.default_rate,
            transcripts=self._send_transcripts, expires_at=int(claims.expires_at),
            max_session_seconds=cfg.server.max_session_seconds,
            idle_timeout=cfg.server.idle_timeout, max_frame_bytes=cfg.server.max_frame_bytes,
            partial_results=self._results.partials,
            speaker_identification=info.speaker_identification,
            speaker_identification_reason=info.speaker_reason,
            rate_limit=claims.rate_limit, language=info.language,
            enroll=(e.name, e.role) if (e := self._enrolment) else None)

    def _summary(self, stop: Stop) -> dict[str, Any]:
        return {
            **super()._summary(stop),
            "audio_ms": round(1000 * self.audio_seconds),
            "finals": self._finals,
            "last_seq": self._seq,
        }

