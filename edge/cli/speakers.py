"""``edge speakers enroll | list | remove``: the daemon's named voiceprints.

These change the file the daemon reads (it notices and reloads). Speaker vectors are
biometric data: they are never printed or logged.
"""

from __future__ import annotations

import argparse
import sys

import edge.cli
from edge.asr.decode import decode_pcm, speaker_vectors_of
from edge.asr.vosk import load_model, load_speaker_model
from edge.cli.audiofile import read_pcm
from edge.cli.audit import record
from edge.cli.common import EXIT_FAIL, EXIT_OK, load, read_phrases
from edge.cli.keys import tool_key
from edge.core.config import Config, voiceprints_path
from edge.core.errors import ConfigError
from edge.speakers import SpeakerIdentification, VoiceprintStore, VoiceprintStoreError, check_name


def _voiceprints(config: Config) -> SpeakerIdentification | None:
    """The daemon's voiceprints, or None with a message when no speaker model is
    configured."""
    if not config.recognizer.speaker_model:
        print("edge: no speaker model configured: set recognizer.speaker_model (e.g. "
              "`edge models install vosk-model-spk-0.4 --config FILE --set-config`)",
              file=sys.stderr)
        return None
    s = config.speakers
    return SpeakerIdentification(
        VoiceprintStore(voiceprints_path(config), key=tool_key(config),
                        threshold=s.identification_threshold),
        diarization_threshold=s.diarization_threshold, max_speakers=s.max_speakers)


def run_enroll(args: argparse.Namespace) -> int:
    """Decode each file with the model and the speaker model, enrol the mean of the
    utterances' speaker vectors (blocking: loads both models, decodes every file)."""
    config = load(args, **{"recognizer.model": args.model})
    edge.cli.setup_logging(config.log.level)
    try:
        name = check_name(args.name)
    except ValueError as exc:
        raise ConfigError("--name", str(exc)) from None
    phrases = read_phrases(args.phrases)
    identification = _voiceprints(config)
    if identification is None:
        return EXIT_FAIL
    audio = []
    for path in args.files:
        recording = read_pcm(path, config.recognizer.sample_rate, wav_only=True)
        if recording is None:
            return EXIT_FAIL
        pcm, rate, _ = recording  # a mixed-down stereo file enrols as well as mono
        audio.append((path, pcm, rate))
    model = load_model(config.recognizer.model or None).with_speaker_model(
        load_speaker_model(config.recognizer.speaker_model))
    vectors: list[tuple[float, ...]] = []
    for path, pcm, rate in audio:
        found = speaker_vectors_of(decode_pcm(
            model.recognizer(rate, phrases), pcm, rate,
            turn_silence_ms=config.recognizer.endpoint_silence_ms))
        if not found:
            print(f"edge: {path}: no utterance with half a second of speech or more; "
                  "skipped", file=sys.stderr)
        vectors.extend(found)
    if not vectors:
        print("edge: nothing to enrol: the recordings hold no usable speech",
              file=sys.stderr)
        return EXIT_FAIL
    try:
        voiceprint = identification.enroll(name, args.role, vectors)
    except (ValueError, VoiceprintStoreError) as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_FAIL
    record(config, "voiceprint.enrol", object=voiceprint.name,
           detail={"utterances": voiceprint.count})
    role = f" ({voiceprint.role})" if voiceprint.role else ""
    print(f"enrolled {voiceprint.name}{role} from {voiceprint.count} utterance(s) in "
          f"{len(audio)} file(s) into {identification.store.path}")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    """Enrolled names, roles and dates (no voice data). Blocking: reads the file."""
    identification = _voiceprints(load(args))
    if identification is None:
        return EXIT_FAIL
    try:
        identification.store.load()
    except VoiceprintStoreError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_FAIL
    prints = identification.store.list()
    if not prints:
        print(f"no speakers enrolled ({identification.store.path})")
        return EXIT_OK
    print(f"{'NAME':<30}{'ROLE':<16}{'UTTERANCES':<12}ENROLLED")
    for p in prints:
        print(f"{p.name:<30}{p.role or '-':<16}{p.count:<12}{p.created}")
    return EXIT_OK


def run_remove(args: argparse.Namespace) -> int:
    """Forget one enrolled speaker (blocking: rewrites the file)."""
    config = load(args)
    edge.cli.setup_logging(config.log.level)
    identification = _voiceprints(config)
    if identification is None:
        return EXIT_FAIL
    try:
        removed = identification.remove(args.name)
    except VoiceprintStoreError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if not removed:
        print(f"edge: no speaker named {args.name!r} is enrolled", file=sys.stderr)
        return EXIT_FAIL
    record(config, "voiceprint.remove", object=args.name)
    print(f"removed {args.name}")
    return EXIT_OK
