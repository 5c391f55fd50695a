"""The ``edge`` command: ``serve``, ``token``, ``transcribe``, ``client``.

``main(argv) -> int`` is the whole interface (tests call it). Exit codes: 0 success,
1 runtime failure (model, network, refused handshake), 2 usage or configuration
error (the message names the key).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from edge import __version__, app
from edge.core.config import Config, load_config
from edge.core.errors import AudioFormatError, ConfigError, EdgeError, RecognizerError
from edge.protocols import live as protocol

logger = logging.getLogger("edge")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RecognizerError, AudioFormatError) as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon")
    _config_args(serve)
    serve.add_argument("--host", help="address to bind (server.host)")
    serve.add_argument("--port", type=int, help="port to bind (server.port)")
    serve.add_argument("--model", help="Vosk model directory (recognizer.model)")
    serve.add_argument("--dev", action="store_true",
                       help="without a configured secret, generate and use a development "
                            "secret in the state directory")
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="print a signed JWT (for operators and tests)")
    _config_args(token)
    token.add_argument("--sub", required=True, help="subject (user or device id)")
    token.add_argument("--scope", default="transcription:read transcription:write")
    token.add_argument("--user-type", default="doctor")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    token.add_argument("--claim", action="append", default=[], metavar="K=V",
                       help="extra claim; V is parsed as JSON when it is valid JSON")
    token.add_argument("--private-key", help="PEM private key: sign with RS256")
    token.add_argument("--dev", action="store_true", help="sign with the development secret")
    token.set_defaults(func=_token)

    transcribe = sub.add_parser("transcribe", help="transcribe a WAV file offline")
    transcribe.add_argument("file", type=Path)
    transcribe.add_argument("--model", help="Vosk model directory")
    transcribe.add_argument("--phrases", type=Path,
                            help="JSON file with a list of phrases (a Vosk grammar)")
    transcribe.add_argument("--partials", action="store_true", help="print partials too")
    _config_args(transcribe)
    transcribe.set_defaults(func=_transcribe)

    models = sub.add_parser("models", help="list and install Vosk models")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_list = models_sub.add_parser("list", help="known models and what is installed")
    _config_args(models_list)
    models_list.set_defaults(func=_models_list)
    models_install = models_sub.add_parser(
        "install", help="download (or unpack), verify and install a model")
    models_install.add_argument("source", help="catalogue name, http(s) URL or .zip file")
    models_install.add_argument("--sha256", help="expected SHA-256 of the archive")
    models_install.add_argument("--set-config", action="store_true",
                                help="point the --config file at the installed model")
    _config_args(models_install)
    models_install.set_defaults(func=_models_install)

    scripts = sub.add_parser("transcripts", help="read the journal of sessions")
    scripts_sub = scripts.add_subparsers(dest="transcripts_command", required=True,
                                         metavar="ACTION")
    scripts_list = scripts_sub.add_parser("list", help="sessions in the journal")
    scripts_list.add_argument("--since", help="e.g. 12h, 7d, or 2026-11-01T08:00")
    _config_args(scripts_list)
    scripts_list.set_defaults(func=_transcripts_list)
    scripts_show = scripts_sub.add_parser("show", help="one session's transcript")
    scripts_show.add_argument("session_id")
    scripts_show.add_argument("--format", choices=["json", "text", "vtt"], default="text")
    _config_args(scripts_show)
    scripts_show.set_defaults(func=_transcripts_show)

    speakers = sub.add_parser("speakers", help="enrol, list and remove named voiceprints")
    speakers_sub = speakers.add_subparsers(dest="speakers_command", required=True,
                                           metavar="ACTION")
    speakers_enroll = speakers_sub.add_parser(
        "enroll", help="enrol a speaker from WAV recordings of their voice alone")
    speakers_enroll.add_argument("--name", required=True, help='e.g. "Dr. Lee"')
    speakers_enroll.add_argument("--role", help="e.g. doctor (sent as speaker_role)")
    speakers_enroll.add_argument("--model", help="Vosk model directory (recognizer.model)")
    speakers_enroll.add_argument("--phrases", type=Path,
                                 help="JSON list of the phrases spoken (a Vosk grammar)")
    speakers_enroll.add_argument("files", nargs="+", type=Path, metavar="FILE.wav")
    _config_args(speakers_enroll)
    speakers_enroll.set_defaults(func=_speakers_enroll)
    speakers_list = speakers_sub.add_parser("list", help="enrolled speakers (no voice data)")
    _config_args(speakers_list)
    speakers_list.set_defaults(func=_speakers_list)
    speakers_remove = speakers_sub.add_parser("remove", help="forget an enrolled speaker")
    speakers_remove.add_argument("name")
    _config_args(speakers_remove)
    speakers_remove.set_defaults(func=_speakers_remove)

    devices = sub.add_parser("devices", help="list audio input devices (for microphone.device)")
    devices.set_defaults(func=_devices)

    check = sub.add_parser("check", help="check config, keys, model, clock, port; exit 1 "
                           "if anything must be fixed")
    _config_args(check)
    check.add_argument("--model", help="Vosk model directory (recognizer.model)")
    check.add_argument("--no-load", action="store_true",
                       help="check the model's files without loading it")
    check.set_defaults(func=_check)

    client = sub.add_parser("client", help="stream a file to a server, print its messages")
    client.add_argument("url", help="e.g. ws://127.0.0.1:8000/ws/transcribe")
    client.add_argument("file", help="WAV or raw s16le PCM file, or - for stdin")
    client.add_argument("--token", default=os.environ.get("EDGE_TOKEN"),
                        help="JWT (default: $EDGE_TOKEN)")
    client.add_argument("--fast", action="store_true", help="send as fast as possible")
    client.add_argument("--sample-rate", type=int, default=16000,
                        help="rate of raw PCM input (WAV files carry their own)")
    client.add_argument("--phrases", type=Path, help="JSON list of phrases to send as config")
    client.add_argument("--cafile", help="CA certificate to trust for wss://")
    client.set_defaults(func=_client)
    return parser


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("EDGE_CONFIG"),
                        help="TOML config file (default: $EDGE_CONFIG)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _load(args: argparse.Namespace, **overrides: Any) -> Config:
    overrides["log.level"] = getattr(args, "log_level", None)
    return load_config(args.config, overrides=overrides)


def setup_logging(level: str) -> None:
    # Under systemd, journald adds time and unit: a line is "LEVEL logger: message".
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not journald:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


# --- serve ---------------------------------------------------------------------------

def _serve(args: argparse.Namespace) -> int:
    config = _load(args, **{"server.host": args.host, "server.port": args.port,
                            "recognizer.model": args.model})
    setup_logging(config.log.level)
    if args.dev:
        _print_dev_hint(config)
    try:
        trio.run(functools.partial(app.run, config, dev=args.dev))
    except BaseExceptionGroup as group:
        # Start-up failures surface from inside the app's nurseries: report the first
        # one we have words for, and let anything else keep its traceback.
        failure = _find(group, (EdgeError, OSError))
        if failure is None:
            raise
        if isinstance(failure, EdgeError):
            raise failure from None
        print(f"edge: cannot listen on {config.server.host}:{config.server.port}: {failure}",
              file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _find(group: BaseExceptionGroup[Any], kinds: tuple[type[BaseException], ...]
          ) -> BaseException | None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _find(exc, kinds)
            if found is not None:
                return found
        elif isinstance(exc, kinds):
            return exc
    return None


def _print_dev_hint(config: Config) -> None:
    if config.auth.secret or config.auth.secret_file or config.auth.algorithm != "HS256":
        return
    app.ensure_dev_secret(config)
    cfg = f" --config {os.environ['EDGE_CONFIG']}" if os.environ.get("EDGE_CONFIG") else ""
    print(f"edge: development secret in {app.dev_secret_path(config)}\n"
          f"edge: get a token with: edge token --dev{cfg} --sub me", file=sys.stderr)


# --- token ---------------------------------------------------------------------------

def _token(args: argparse.Namespace) -> int:
    import jwt

    from edge.core.auth import mint

    config = _load(args)
    extra: dict[str, Any] = {}
    for item in args.claim:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError("--claim", f"expected K=V, got {item!r}")
        try:
            extra[key] = json.loads(raw)
        except json.JSONDecodeError:
            extra[key] = raw
    if args.private_key:
        try:
            algorithm, key_text = "RS256", Path(args.private_key).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("--private-key", f"cannot read {args.private_key}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    else:
        algorithm, key_text = "HS256", app.signing_key(config, dev=args.dev)
    if args.ttl <= 0:
        raise ConfigError("--ttl", "must be greater than 0")
    try:
        token = mint(algorithm=algorithm, key=key_text, sub=args.sub, scope=args.scope,
                     user_type=args.user_type, ttl=args.ttl, now=time.time(),
                     issuer=config.auth.issuer or None,
                     audience=config.auth.audience or None, extra=extra)
    except (jwt.PyJWTError, ValueError) as exc:
        if args.private_key:
            raise ConfigError("--private-key", f"{args.private_key} is not a PEM RSA private "
                              "key") from exc
        raise ConfigError("auth.secret", f"cannot sign with this secret: {exc}") from exc
    print(token)
    return EXIT_OK


# --- transcribe ----------------------------------------------------------------------

def _transcribe(args: argparse.Namespace) -> int:
    from edge.asr.vosk import load_model
    from edge.audio.frames import PcmDecoder, is_wav

    config = _load(args, **{"recognizer.model": args.model})
    setup_logging(config.log.level)
    phrases = _read_phrases(args.phrases)
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
    recognizer = model.recognizer(decoder.format.sample_rate, phrases)
    session_id = str(uuid.uuid4())
    seq = 0
    step = decoder.format.sample_rate * 2 // 10  # 100 ms, as a streaming client sends
    results = []
    for i in range(0, len(pcm), step):
        results.extend(recognizer.accept(pcm[i:i + step]))
    final = recognizer.flush()
    if final is not None:
        results.append(final)
    for utterance in results:
        if utterance.is_final or args.partials:
            seq += 1
            print(protocol.encode(protocol.transcription(session_id, seq, utterance)))
    return EXIT_OK


def _read_phrases(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        phrases = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError("--phrases", f"cannot read a JSON list from {path}: {exc}") from exc
    if isinstance(phrases, dict):
        phrases = phrases.get("grammar") or phrases.get("phrases")
    if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
        raise ConfigError("--phrases", f"{path} must hold a JSON list of strings")
    return [p for p in phrases if p != "[unk]"]


# --- models --------------------------------------------------------------------------

def _models_list(args: argparse.Namespace) -> int:
    from edge.asr.catalogue import format_table, list_models
    from edge.core.config import state_dir

    config = _load(args)
    print(format_table(list_models(state_dir(config))))
    return EXIT_OK


def _models_install(args: argparse.Namespace) -> int:
    from edge.asr.catalogue import CONFIG_KEYS, detect_kind
    from edge.asr.install import ModelInstallError, install, progress_bar
    from edge.cli.config_edit import set_config_model
    from edge.core.config import state_dir

    config = _load(args)
    setup_logging(config.log.level)
    if args.set_config and not args.config:
        raise ConfigError("--config", "--set-config needs the config file to change")
    try:
        path = install(args.source, state_dir(config), sha256=args.sha256,
                       progress=progress_bar(sys.stderr))
    except ModelInstallError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(path)
    if args.set_config:
        kind = detect_kind(path) or "asr"
        set_config_model(Path(args.config), CONFIG_KEYS[kind], str(path))
        print(f"edge: {args.config}: {CONFIG_KEYS[kind]} = {path}", file=sys.stderr)
    return EXIT_OK


# --- transcripts -----------------------------------------------------------------------

def _open_journal_readonly(args: argparse.Namespace) -> Any:
    from edge.app import device_id
    from edge.core.config import journal_path
    from edge.journal.db import Journal, JournalError

    config = _load(args)
    try:
        return Journal.open(journal_path(config), device_id=device_id(config), readonly=True)
    except JournalError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return None


def _transcripts_list(args: argparse.Namespace) -> int:
    from edge.journal import transcripts

    since = None
    if args.since:
        try:
            since = transcripts.parse_since(args.since)
        except ValueError as exc:
            raise ConfigError("--since", str(exc)) from None
    journal = _open_journal_readonly(args)
    if journal is None:
        return EXIT_FAIL
    with journal:
        print(transcripts.list_table(journal.sessions(since)))
    return EXIT_OK


def _transcripts_show(args: argparse.Namespace) -> int:
    from edge.journal import transcripts

    journal = _open_journal_readonly(args)
    if journal is None:
        return EXIT_FAIL
    with journal:
        row = journal.session(args.session_id)
        if row is None:
            print(f"edge: no session {args.session_id} in the journal", file=sys.stderr)
            return EXIT_FAIL
        sys.stdout.write(transcripts.render(args.format, row,
                                            journal.finals(row.session_id, row.device_id)))
    return EXIT_OK


# --- speakers ------------------------------------------------------------------------

def _voiceprints(config: Config) -> Any:
    """The daemon's voiceprints (a SpeakerIdentification), or None with a message when
    no speaker model is configured."""
    from edge.core.config import voiceprints_path
    from edge.speakers import SpeakerIdentification, VoiceprintStore

    if not config.recognizer.speaker_model:
        print("edge: no speaker model configured: set recognizer.speaker_model (e.g. "
              "`edge models install vosk-model-spk-0.4 --config FILE --set-config`)",
              file=sys.stderr)
        return None
    s = config.speakers
    return SpeakerIdentification(
        VoiceprintStore(voiceprints_path(config), threshold=s.identification_threshold),
        diarization_threshold=s.diarization_threshold, max_speakers=s.max_speakers)


def _speakers_enroll(args: argparse.Namespace) -> int:
    """Decode each file with the model and the speaker model, enrol the mean of the
    utterances' speaker vectors. The vectors are never printed or logged."""
    from edge.asr.vosk import load_model, load_speaker_model
    from edge.audio.frames import PcmDecoder, is_wav
    from edge.speakers import VoiceprintStoreError, check_name

    config = _load(args, **{"recognizer.model": args.model})
    setup_logging(config.log.level)
    try:
        name = check_name(args.name)
    except ValueError as exc:
        raise ConfigError("--name", str(exc)) from None
    phrases = _read_phrases(args.phrases)
    identification = _voiceprints(config)
    if identification is None:
        return EXIT_FAIL
    audio = []
    for path in args.files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"edge: cannot read {path}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAIL
        if not is_wav(data):
            print(f"edge: {path} is not a WAV file (no RIFF/WAVE header)", file=sys.stderr)
            return EXIT_FAIL
        decoder = PcmDecoder(config.recognizer.sample_rate)
        pcm, _ = decoder.feed(data)
        assert decoder.format is not None  # set by the first feed of a WAV header
        audio.append((path, pcm, decoder.format.sample_rate))
    model = load_model(config.recognizer.model or None).with_speaker_model(
        load_speaker_model(config.recognizer.speaker_model))
    vectors: list[tuple[float, ...]] = []
    for path, pcm, rate in audio:
        found = _speaker_vectors(model, pcm, rate, phrases)
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
    role = f" ({voiceprint.role})" if voiceprint.role else ""
    print(f"enrolled {voiceprint.name}{role} from {voiceprint.count} utterance(s) in "
          f"{len(audio)} file(s) into {identification.store.path}")
    return EXIT_OK


def _speaker_vectors(model: Any, pcm: bytes, rate: int, phrases: list[str] | None
                     ) -> list[tuple[float, ...]]:
    """The speaker vectors of a recording's finals, fed in 100 ms chunks as a client
    streams (blocking)."""
    recognizer = model.recognizer(rate, phrases)
    step = rate * 2 // 10
    results = [u for i in range(0, len(pcm), step) for u in recognizer.accept(pcm[i:i + step])]
    final = recognizer.flush()
    if final is not None:
        results.append(final)
    return [u.speaker_vector for u in results if u.is_final and u.speaker_vector is not None]


def _speakers_list(args: argparse.Namespace) -> int:
    from edge.speakers import VoiceprintStoreError

    identification = _voiceprints(_load(args))
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


def _speakers_remove(args: argparse.Namespace) -> int:
    from edge.speakers import VoiceprintStoreError

    config = _load(args)
    setup_logging(config.log.level)
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
    print(f"removed {args.name}")
    return EXIT_OK


# --- devices -------------------------------------------------------------------------

def _devices(args: argparse.Namespace) -> int:
    from edge.audio.capture import list_input_devices

    try:
        found = list_input_devices()
    except OSError as exc:
        print(f"edge: cannot list audio devices: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if not found:
        print("no audio input devices (is the microphone plugged in? is this user in the "
              "audio group?)")
        return EXIT_FAIL
    print(f"{'INDEX':<6}{'CHANNELS':<10}{'RATE':<8}{'API':<8}NAME")
    for d in found:
        print(f"{d.index:<6}{d.max_input_channels:<10}{round(d.default_sample_rate):<8}"
              f"{d.host_api:<8}{d.name}")
    return EXIT_OK


# --- check ---------------------------------------------------------------------------

def _check(args: argparse.Namespace) -> int:
    from edge.ops.check import FAIL, run_checks

    config = _load(args, **{"recognizer.model": args.model})
    findings = run_checks(config, load=not args.no_load)
    for finding in findings:
        print(finding.line())
    failed = [f for f in findings if f.level == FAIL]
    print(f"{len(failed)} problem(s) to fix" if failed else "all checks passed")
    return EXIT_FAIL if failed else EXIT_OK


# --- client --------------------------------------------------------------------------

def _client(args: argparse.Namespace) -> int:
    import ssl

    from trio_websocket import ConnectionRejected, HandshakeError

    from edge.net.client import stream_file

    if not args.token:
        raise ConfigError("--token", "a token is required (or set EDGE_TOKEN)")
    phrases = _read_phrases(args.phrases)
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None

    def show(message: dict[str, Any]) -> None:
        print(json.dumps(message, ensure_ascii=False), flush=True)

    try:
        source = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"edge: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAIL
    try:
        result = trio.run(lambda: stream_file(
            args.url, args.token, source, realtime=not args.fast,
            sample_rate=args.sample_rate, phrases=phrases, on_message=show,
            ssl_context=context))
    except ConnectionRejected as exc:
        body = (exc.body or b"").decode(errors="replace")
        print(f"edge: handshake refused: HTTP {exc.status_code} {body}", file=sys.stderr)
        return EXIT_FAIL
    except (HandshakeError, OSError) as exc:
        reason = exc.__cause__ or exc
        print(f"edge: cannot connect to {args.url}: {str(reason) or type(reason).__name__}",
              file=sys.stderr)
        return EXIT_FAIL
    except ValueError as exc:
        raise ConfigError("URL", f"cannot use {args.url!r}: {exc}") from None
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    if result.close_code != protocol.CLOSE_NORMAL:
        print(f"edge: connection closed with {result.close_code} {result.close_reason or ''}",
              file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
