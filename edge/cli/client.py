"""``edge client``: stream a file to a server and print its messages (the smoke test
an operator runs against a device)."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from typing import Any

import trio
from trio_websocket import ConnectionRejected, HandshakeError

from edge.cli.common import EXIT_FAIL, EXIT_OK, read_phrases
from edge.core.close_codes import CLOSE_NORMAL
from edge.core.errors import ConfigError
from edge.net.client import stream_file


def run(args: argparse.Namespace) -> int:
    """Blocks in ``trio.run`` until the server closes the session (at real-time pace
    unless ``--fast``). Closes the file it opened; stdin is left open."""
    if not args.token:
        raise ConfigError("--token", "a token is required (or set EDGE_TOKEN)")
    phrases = read_phrases(args.phrases)
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
    if result.close_code != CLOSE_NORMAL:
        print(f"edge: connection closed with {result.close_code} {result.close_reason or ''}",
              file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK
