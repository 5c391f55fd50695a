"""Decoding a whole recording at once, for the offline commands and tools.

Blocking: real CPU for the whole recording (about 0.1 s per second of audio on a Pi 4),
so nothing on the event loop calls it. The audio is fed in chunks as a streaming client
sends it, so that a file decodes as it would in a live session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    # edge.asr.recognizer imports edge.speakers (numpy); decoding needs neither.
    from edge.asr.recognizer import Recognizer
    from edge.audio.pauses import TurnEnd
    from edge.protocols.live import Utterance


#: What a streaming client sends per message (``edge client`` and the web page).
CLIENT_CHUNK_MS = 100


class Given(bytes):
    """Audio a closed gate let through in :func:`through_gate` (its pre-roll and the
    audio from a speech onset): the turn's level rule has heard it already."""


def through_gate(turn: TurnEnd, parts: list[bytes], sample_rate: int) -> list[bytes]:
    """``parts`` through ``turn``'s gate while it is closed, with the level rule alone
    (no recogniser: cheap enough for the event loop, which then need not hand a worker
    thread the room's audio only to leave it out): what is left to decode, the first
    piece a :class:`Given` one if the gate opened, nothing if it stayed closed.
    :func:`accept_each` takes the result as it takes any parts."""
    gate = turn.gate
    out: list[bytes] = []
    for part in _seconds(parts, sample_rate):
        if out or gate.is_open:
            out.append(part)
        elif piece := gate.take(part, turn.onset(part, sample_rate), sample_rate):
            out.append(Given(piece))
    return out


def _seconds(parts: list[bytes], sample_rate: int) -> list[bytes]:
    """``parts`` in pieces of at most a second (whole 200 ms slices of a longer one);
    a :class:`Given` piece whole, as the gate gave it."""
    step = 2 * sample_rate
    return [piece for p in parts for piece in (
        [p] if isinstance(p, Given) or len(p) <= step
        else [p[i:i + step] for i in range(0, len(p), step)])]


def accept_each(recognizer: Recognizer, parts: list[bytes], turn: TurnEnd | None = None,
                sample_rate: int = 0, check: Callable[[], None] | None = None
                ) -> list[Utterance]:
    """Feed ``parts`` one by one, as they came (Vosk's results depend on where its
    input is cut, so batching must not move the cuts); the finals of all of them and
    the partial of the last, if it ended on one (earlier partials are superseded).

    ``check`` (a worker thread's ``trio.from_thread.check_cancelled``) is called
    before each part and each second of a longer one, so that a stream stopped at once
    does not wait for minutes of audio a client sent in one frame to be decoded; a
    part is then fed a second at a time (whole 200 ms slices: the recogniser's cuts
    stay where they were, unless a turn ends inside the part).

    With ``turn`` (audio at ``sample_rate``), a turn is finalised where its pause
    completes (the part is cut there, the one place a cut moves), before the rest is
    fed, and what the turn's gate refuses is left out: a batch decoded late ends its
    turns where they would have ended live, and a turn does not wait for the rest of
    the client's chunk. With its :class:`~edge.audio.pauses.SilenceGate` enabled, audio
    between turns without speech is not fed at all; results keep the stream's times.
    ``parts`` may have been through the closed gate already (:func:`through_gate`).
    """
    out: list[Utterance] = []
    if check is not None and sample_rate:
        parts = _seconds(parts, sample_rate)
    for part in parts:
        if check is not None:
            check()
        out = [u for u in out if u.is_final]
        if turn is None:
            out += recognizer.accept(part)
            continue
        at = len(part) if isinstance(part, Given) else turn.cut(part, sample_rate)
        for piece in (part[:at], part[at:]) if 0 < at < len(part) else (part,):
            out += _feed(recognizer, turn, piece, sample_rate)
    return out


def _feed(recognizer: Recognizer, turn: TurnEnd, piece: bytes, sample_rate: int
          ) -> list[Utterance]:
    """One piece of a part through the gate, the recogniser and the turn's rules."""
    gate = turn.gate
    if isinstance(piece, Given):  # through the closed gate, heard, on the event loop
        got = recognizer.accept(bytes(piece))
    elif gate.is_open:
        got = recognizer.accept(piece)
        gate.pending = True
        turn.heard(piece, sample_rate)
    else:
        piece = gate.take(piece, turn.onset(piece, sample_rate), sample_rate)
        if not piece:
            return []
        got = recognizer.accept(piece)
    out = [u for u in (u.later(gate.offset_ms) for u in got) if turn.admit(u)]
    if turn.due or (gate.enabled and turn.idle):
        # The turn is over (the pause rule), or nothing was said in it: finalise what
        # the recogniser holds, then, with the gate on, leave the room out until speech.
        final = flush_turn(recognizer, turn) if gate.pending else None
        if final is not None:
            out.append(final)
        if gate.enabled and turn.idle:
            gate.close()
    return out


def flush_turn(recognizer: Recognizer, turn: TurnEnd | None) -> Utterance | None:
    """The final of the utterance in progress (None: nothing, or what ``turn``'s gate
    refuses); the recogniser goes on with a new one."""
    final = recognizer.flush()
    if turn is not None:
        if final is not None:
            final = final.later(turn.gate.offset_ms)
            if not turn.admit(final):
                final = None
        turn.closed()
        turn.gate.pending = False
    return final


def decode_pcm(recognizer: Recognizer, pcm: bytes, sample_rate: int, *,
               chunk_ms: int = CLIENT_CHUNK_MS,
               turn_silence_ms: int | None = None,
               skip_silence: bool = False) -> list[Utterance]:
    """Feed mono s16le ``pcm`` to ``recognizer`` in ``chunk_ms`` chunks, then flush.

    Returns every utterance in order: partials and finals as ``accept`` gave them, and
    the final that ``flush`` gives last. ``turn_silence_ms`` closes turns at pauses as a
    live session does (``recognizer.endpoint_silence_ms``; None or 0: Vosk's endpointer
    only). ``skip_silence``: audio between turns without speech is not decoded (see
    :func:`accept_each`). The caller owns the recogniser and closes it.
    """
    turn = None
    if turn_silence_ms or skip_silence:
        from edge.audio.pauses import TurnEnd  # numpy: only when asked for

        turn = TurnEnd(turn_silence_ms, skip_silence)
    step = max(1, sample_rate * chunk_ms // 1000) * 2  # whole samples
    results: list[Utterance] = []
    for i in range(0, len(pcm), step):
        results.extend(accept_each(recognizer, [pcm[i:i + step]], turn, sample_rate))
    final = flush_turn(recognizer, turn)
    if final is not None:
        results.append(final)
    return results


def speaker_vectors_of(utterances: list[Utterance]) -> list[tuple[float, ...]]:
    """The speaker vectors of the finals that have one (utterances with 0.5 s of speech
    or more, decoded with a speaker model)."""
    return [u.speaker_vector for u in utterances if u.is_final and u.speaker_vector is not None]
