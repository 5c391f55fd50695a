"""``edge serve``: run the daemon until stopped.

Loads the whole daemon (:mod:`edge.app`: vosk, the server, the room's audio capture).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any

import trio

import edge.cli
from edge import app
from edge.cli.common import EXIT_FAIL, EXIT_OK, load
from edge.core import keys
from edge.core.config import Config
from edge.core.errors import EdgeError


def run(args: argparse.Namespace) -> int:
    """Blocks in ``trio.run`` until the daemon stops (a signal, or a start-up failure)."""
    config = load(args, **{"server.host": args.host, "server.port": args.port,
                           "recognizer.model": args.model})
    edge.cli.setup_logging(config.log.level)
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
    keys.ensure_dev_secret(config)
    cfg = f" --config {os.environ['EDGE_CONFIG']}" if os.environ.get("EDGE_CONFIG") else ""
    print(f"edge: development secret in {keys.dev_secret_path(config)}\n"
          f"edge: get a token with: edge token --dev{cfg} --sub me", file=sys.stderr)
