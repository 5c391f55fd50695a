"""Decoding a whole recording at once, for the offline commands and tools.

Blocking: real CPU for the whole recording (about 0.1 s per second of audio on a Pi 4),
so nothing on the event loop calls it. The audio is fed in chunks as a streaming client
sends it, so that a file decodes as it would in a live session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # edge.asr.recognizer imports edge.speakers (numpy); decoding needs neither.
    from edge.asr.recognizer import Recognizer
    from edge.protocols.live import Utterance

#: What a streaming client sends per message (``edge client`` and the web page).
CLIENT_CHUNK_MS = 100


def decode_pcm(recognizer: Recognizer, pcm: bytes, sample_rate: int, *,
               chunk_ms: int = CLIENT_CHUNK_MS,
               turn_silence_ms: int | None = None) -> list[Utterance]:
    """Feed mono s16le ``pcm`` to ``recognizer`` in ``chunk_ms`` chunks, then flush.

    Returns every utterance in order: partials and finals as ``accept`` gave them, and
    the final that ``flush`` gives last. ``turn_silence_ms`` closes turns at pauses as a
    live session does (``recognizer.endpoint_silence_ms``; None or 0: Vosk's endpointer
    only). The caller owns the recogniser and closes it.
    """
    turn = None
    if turn_silence_ms:
        from edge.audio.pauses import TurnEnd  # numpy: only when asked for

        turn = TurnEnd(turn_silence_ms)
    step = max(1, sample_rate * chunk_ms // 1000) * 2  # whole samples
    results: list[Utterance] = []
    def keep(utterance: Utterance | None) -> None:
        if utterance is not None and (
                turn is None or turn.admit(utterance)):
            results.append(utterance)

    for i in range(0, len(pcm), step):
        chunk = pcm[i:i + step]
        got = recognizer.accept(chunk)
        if turn is not None:
            turn.heard(chunk, sample_rate)
        for utterance in got:
            keep(utterance)
        if turn is not None and turn.due:
            keep(recognizer.flush())
            turn.closed()
    keep(recognizer.flush())
    return results


def speaker_vectors_of(utterances: list[Utterance]) -> list[tuple[float, ...]]:
    """The speaker vectors of the finals that have one (utterances with 0.5 s of speech
    or more, decoded with a speaker model)."""
    return [u.speaker_vector for u in utterances if u.is_final and u.speaker_vector is not None]
