"""The ``edge`` command: ``serve``, ``token``, ``transcribe``, ``client``.

``main(argv) -> int`` is the whole interface (tests call it). Exit codes: 0 success,
1 runtime failure (model, network, refused handshake), 2 usage or configuration
error (the message names the key).

This module holds the parser only; each command lives in a module of its own
(``edge.cli.serve``, ``edge.cli.token``, ...), imported once the command line has been
parsed, so that a command loads only what it uses: ``edge --version`` and ``edge token``
load neither vosk nor numpy nor PyAudio.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edge import __version__
from edge.cli.common import EXIT_FAIL, EXIT_USAGE
from edge.core.errors import AudioFormatError, ConfigError, RecognizerError

__all__ = ["main", "setup_logging"]

# What ArgumentParser.add_subparsers returns, which argparse does not name publicly.
Subparsers = argparse._SubParsersAction


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = _command(args.command_function)(args)
        return result
    except ConfigError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RecognizerError, AudioFormatError) as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """``"module:function"`` in ``edge.cli``, imported now that it is needed."""
    module, _, function = name.partition(":")
    command: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(f"edge.cli.{module}"), function)
    return command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def _add_serve(sub: Subparsers) -> None:
    serve = sub.add_parser("serve", help="run the daemon")
    _config_args(serve)
    serve.add_argument("--host", help="address to bind (server.host)")
    serve.add_argument("--port", type=int, help="port to bind (server.port)")
    serve.add_argument("--model", help="Vosk model directory (recognizer.model)")
    serve.add_argument("--dev", action="store_true",
                       help="without a configured secret, generate and use a development "
                            "secret in the state directory")
    serve.set_defaults(command_function="serve:run")


def _add_token(sub: Subparsers) -> None:
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
    token.set_defaults(command_function="token:run")


def _add_transcribe(sub: Subparsers) -> None:
    transcribe = sub.add_parser("transcribe", help="transcribe a WAV file offline")
    transcribe.add_argument("file", type=Path)
    transcribe.add_argument("--model", help="Vosk model directory")
    transcribe.add_argument("--phrases", type=Path,
                            help="JSON file with a list of phrases (a Vosk grammar)")
    transcribe.add_argument("--partials", action="store_true", help="print partials too")
    _config_args(transcribe)
    transcribe.set_defaults(command_function="transcribe:run")


def _add_models(sub: Subparsers) -> None:
    models = sub.add_parser("models", help="list and install Vosk models")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_list = models_sub.add_parser("list", help="known models and what is installed")
    _config_args(models_list)
    models_list.set_defaults(command_function="models:run_list")
    models_install = models_sub.add_parser(
        "install", help="download (or unpack), verify and install a model")
    models_install.add_argument("source", help="catalogue name, http(s) URL or .zip file")
    models_install.add_argument("--sha256", help="expected SHA-256 of the archive")
    models_install.add_argument("--set-config", action="store_true",
                                help="point the --config file at the installed model")
    models_install.add_argument(
        "--language", metavar="TAG",
        help="add the model to the --config file's [recognizer.models] for this language")
    models_install.add_argument("--force", action="store_true",
                                help="with --language: replace the model serving it")
    _config_args(models_install)
    models_install.set_defaults(command_function="models:run_install")


def _add_transcripts(sub: Subparsers) -> None:
    scripts = sub.add_parser("transcripts", help="read the journal of sessions")
    scripts_sub = scripts.add_subparsers(dest="transcripts_command", required=True,
                                         metavar="ACTION")
    scripts_list = scripts_sub.add_parser("list", help="sessions in the journal")
    scripts_list.add_argument("--since", help="e.g. 12h, 7d, or 2026-11-01T08:00")
    _config_args(scripts_list)
    scripts_list.set_defaults(command_function="transcripts:run_list")
    scripts_show = scripts_sub.add_parser("show", help="one session's transcript")
    scripts_show.add_argument("session_id")
    scripts_show.add_argument("--format", choices=["json", "text", "vtt"], default="text")
    _config_args(scripts_show)
    scripts_show.set_defaults(command_function="transcripts:run_show")


def _add_audit(sub: Subparsers) -> None:
    audit = sub.add_parser("audit", help="read and verify the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    audit_list = audit_sub.add_parser("list", help="audit records, oldest first")
    audit_list.add_argument("--since", help="e.g. 12h, 7d, or 2026-11-01T08:00")
    audit_list.add_argument("--sub", help="only this subject's acts")
    audit_list.add_argument("--session", help="only acts on this session id (or speaker)")
    audit_list.add_argument("--device", help="the records relayed from this device")
    audit_list.add_argument("--limit", type=int, default=10000, help="the last N")
    audit_list.add_argument("--json", action="store_true", help="one JSON object a line")
    _config_args(audit_list)
    audit_list.set_defaults(command_function="audit:run_list")
    audit_verify = audit_sub.add_parser("verify", help="check the hash chain")
    audit_verify.add_argument("--device", help="the records relayed from this device")
    _config_args(audit_verify)
    audit_verify.set_defaults(command_function="audit:run_verify")


def _add_relay(sub: Subparsers) -> None:
    relay = sub.add_parser("relay", help="events the relay set aside (refused, too large)")
    relay_sub = relay.add_subparsers(dest="relay_command", required=True, metavar="ACTION")
    relay_list = relay_sub.add_parser("set-aside", help="list the events set aside")
    relay_list.add_argument("--limit", type=int, default=1000)
    relay_list.add_argument("--json", action="store_true", help="one JSON list")
    _config_args(relay_list)
    relay_list.set_defaults(command_function="relay:run_list")
    relay_requeue = relay_sub.add_parser("requeue", help="send set-aside events again")
    relay_requeue.add_argument("ids", nargs="*", type=int, metavar="ID")
    relay_requeue.add_argument("--all", action="store_true", help="every set-aside event")
    _config_args(relay_requeue)
    relay_requeue.set_defaults(command_function="relay:run_requeue")


def _add_speakers(sub: Subparsers) -> None:
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
    speakers_enroll.set_defaults(command_function="speakers:run_enroll")
    speakers_list = speakers_sub.add_parser("list", help="enrolled speakers (no voice data)")
    _config_args(speakers_list)
    speakers_list.set_defaults(command_function="speakers:run_list")
    speakers_remove = speakers_sub.add_parser("remove", help="forget an enrolled speaker")
    speakers_remove.add_argument("name")
    _config_args(speakers_remove)
    speakers_remove.set_defaults(command_function="speakers:run_remove")


def _add_devices(sub: Subparsers) -> None:
    devices = sub.add_parser("devices", help="list audio input devices (for microphone.device)")
    devices.set_defaults(command_function="devices:run")


def _add_keys(sub: Subparsers) -> None:
    keys = sub.add_parser("keys", help="the key that encrypts the journal and voiceprints")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    keys_init = keys_sub.add_parser("init", help="make a key and keep it (sealed, or in a "
                                    "file)")
    _sealing_args(keys_init)
    keys_init.add_argument("--file", help="write the key itself to this file (development)")
    keys_init.add_argument("--jwe", help="where the sealed key goes (default "
                           "journal.key_jwe, or <state dir>/journal-key.jwe)")
    _config_args(keys_init)
    keys_init.set_defaults(command_function="keys:run_init")
    keys_status = keys_sub.add_parser("status", help="where the key comes from; does it "
                                      "open the journal")
    keys_status.add_argument("--json", action="store_true", help="one JSON object")
    _config_args(keys_status)
    keys_status.set_defaults(command_function="keys:run_status")
    keys_rotate = keys_sub.add_parser("rotate", help="re-encrypt everything under a new "
                                      "key (stop the daemon first)")
    _sealing_args(keys_rotate)
    _config_args(keys_rotate)
    keys_rotate.set_defaults(command_function="keys:run_rotate")


def _add_check(sub: Subparsers) -> None:
    check = sub.add_parser("check", help="check config, keys, model, clock, port; exit 1 "
                           "if anything must be fixed")
    _config_args(check)
    check.add_argument("--model", help="Vosk model directory (recognizer.model)")
    check.add_argument("--no-load", action="store_true",
                       help="check the model's files without loading it")
    check.add_argument("--memory-limits", action="store_true",
                       help="print the unit's MemoryHigh= and MemoryMax= for this config "
                       "(measured with the model loaded) and exit")
    check.set_defaults(command_function="check:run")


def _add_client(sub: Subparsers) -> None:
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
    client.set_defaults(command_function="client:run")


#: Each adds one command (and its actions) to the parser, in the order ``--help`` lists.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    _add_serve,
    _add_token,
    _add_transcribe,
    _add_models,
    _add_transcripts,
    _add_audit,
    _add_relay,
    _add_speakers,
    _add_devices,
    _add_keys,
    _add_check,
    _add_client,
)


def _sealing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tang", action="append", default=[], metavar="URL",
                   help="seal with this Tang server (repeat for several)")
    p.add_argument("--tang-thp", action="append", default=[], metavar="THUMBPRINT",
                   help="the Tang server's signing key thumbprint (`tang-show-keys`); "
                   "without it the key it advertises now is trusted")
    p.add_argument("--tpm2", action="store_true", help="seal with this board's TPM2")
    p.add_argument("--threshold", type=int, default=1,
                   help="with several pins: how many must answer (default 1)")


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("EDGE_CONFIG"),
                        help="TOML config file (default: $EDGE_CONFIG)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def setup_logging(level: str) -> None:
    """Configure the root logger for a command (replaces its handlers).

    Commands call it as ``edge.cli.setup_logging`` so that tests can replace it.
    """
    # Under systemd, journald adds time and unit: a line is "LEVEL logger: message".
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not journald:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
