"""Tokens a recogniser uses for what is not a word, and results without them.

Pure: no vosk, no trio. Kaldi-trained models (every Vosk model) keep non-speech and
unknown words in their vocabulary as ordinary symbols, written so that they cannot be
mistaken for a word: in brackets (``[unk]``, ``[noise]``, ``[laughter]``), in angle
brackets (``<unk>``, ``<UNK>``, ``<SPOKEN_NOISE>``, ``<s>``, ``<eps>``) or behind an
exclamation mark (``!SIL``). The Korean small model's vocabulary (the word table inside
its ``graph/Gr.fst``) has 122 bracketed symbols, ``[0]`` to ``[99]``, ``[00]`` to
``[09]`` and ``[공]``, ``[일]``, ... ``[쩜]``, besides ``<UNK>``, ``<SPOKEN_NOISE>``,
``<s>``, ``</s>``, ``<eps>`` and ``!SIL``; on room noise and unclear speech it says
``[1]``, ``[2]``, ``[5]``, ``[25]``. Grammars end with ``[unk]``, the name of
out-of-grammar speech in the models that have it. All of them have that shape and no
word of the Korean model's table has it, so the shape is the rule
(``tests/test_nonspeech.py`` checks it against that table).

A final keeps the times and confidences of its remaining words; one made only of
such tokens is no final.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from edge.protocols.events import Utterance, Word

# [..], <..> with something inside, or !WORD (Kaldi's !SIL, !sil).
_SHAPE = re.compile(r"\[[^\[\]\s]+\]|<[^<>\s]+>|![A-Za-z_]+")


def is_nonspeech(token: str) -> bool:
    """Whether ``token`` (one word of a result) stands for non-speech or an unknown word."""
    return _SHAPE.fullmatch(token.strip()) is not None


def speech_words(words: Iterable[Word]) -> tuple[Word, ...]:
    """``words`` without non-speech tokens, the others unchanged."""
    return tuple(w for w in words if not is_nonspeech(w.word))


def speech_text(text: str) -> str:
    """``text`` (words separated by spaces, as Vosk writes them) without non-speech
    tokens, single-spaced; ``""`` when nothing is left."""
    return " ".join(t for t in text.split() if not is_nonspeech(t))


def words_only(utterance: Utterance) -> Utterance | None:
    """``utterance`` without non-speech tokens: ``None`` when nothing is left.

    A final with words keeps the words that are speech, unchanged, and its text and
    times become theirs. A result without words (a partial) keeps its times.
    """
    if not utterance.words:
        text = speech_text(utterance.text)
        if not text:
            return None
        return utterance if text == utterance.text else dataclasses.replace(utterance,
                                                                            text=text)
    words = speech_words(utterance.words)
    if not words:
        return None
    if len(words) == len(utterance.words):
        return utterance
    return dataclasses.replace(utterance, text=" ".join(w.word for w in words),
                               start_ms=words[0].start_ms, end_ms=words[-1].end_ms,
                               words=words)
