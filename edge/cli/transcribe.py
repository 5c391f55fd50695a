"""``edge transcribe``: transcribe a WAV (or raw PCM) file offline and print the
messages a streaming client would get, one JSON object a line."""

from __future__ import annotations

import argparse
import logging
import sys
import uuid

import edge.cli
from edge.asr.decode import decode_pcm
from edge.asr.vosk import load_model
from edge.audio.frames import PcmDecoder, is_wav
from edge.cli.common import EXIT_FAIL, EXIT_OK, load, read_phrases
from edge.protocols import live as protocol

logger = logging.getLogger("edge")


def run(args: argparse.Namespace) -> int:
    """Blocking: loads the model (seconds) and decodes the whole file."""
    config = load(args, **{"recognizer.model": args.model})
    edge.cli.setup_logging(config.log.level)
    phrases = read_phrases(args.phrases)
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"edge: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAIL
    if not data:
        print(f"edge: {args.file} is empty", file=sys.stderr)
        return EXIT_FAIL
    if args.file.suffix.lower() == ".wav" and not is_wav(data):
        print(f"edge: {args.file} is not a WAV file (no RIFF/WAVE header)", file=sys.stderr)
        return EXIT_FAIL
    decoder = PcmDecoder(config.recognizer.sample_rate)
    pcm, notices = decoder.feed(data)
    for notice in notices:
        logger.warning("%s", notice.message)
    assert decoder.format is not None  # set by the first feed
    model = load_model(config.recognizer.model or None)
    rate = decoder.format.sample_rate
    results = decode_pcm(model.recognizer(rate, phrases), pcm, rate)
    session_id = str(uuid.uuid4())
    seq = 0
    for utterance in results:
        if utterance.is_final or args.partials:
            seq += 1
            print(protocol.encode(protocol.transcription(session_id, seq, utterance)))
    return EXIT_OK
