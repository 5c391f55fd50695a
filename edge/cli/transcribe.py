"""``edge transcribe``: transcribe a WAV (or raw PCM) file offline and print the
messages a streaming client would get, one JSON object a line."""

from __future__ import annotations

import argparse
import logging
import uuid

import edge.cli
from edge.asr.decode import decode_pcm
from edge.asr.vosk import load_model
from edge.cli.audiofile import read_pcm
from edge.cli.common import EXIT_FAIL, EXIT_OK, load, read_phrases
from edge.protocols import live as protocol

logger = logging.getLogger("edge")


def run(args: argparse.Namespace) -> int:
    """Blocking: loads the model (seconds) and decodes the whole file."""
    config = load(args, **{"recognizer.model": args.model})
    edge.cli.setup_logging(config.log.level)
    phrases = read_phrases(args.phrases)
    audio = read_pcm(args.file, config.recognizer.sample_rate)
    if audio is None:
        return EXIT_FAIL
    pcm, rate, notices = audio
    for notice in notices:
        logger.warning("%s", notice.message)
    model = load_model(config.recognizer.model or None)
    results = decode_pcm(model.recognizer(rate, phrases), pcm, rate,
                         turn_silence_ms=config.recognizer.endpoint_silence_ms,
                         skip_silence=config.recognizer.skip_silence)
    session_id = str(uuid.uuid4())
    seq = 0
    for utterance in results:
        if utterance.is_final or args.partials:
            seq += 1
            print(protocol.encode(protocol.transcription(session_id, seq, utterance)))
    return EXIT_OK
