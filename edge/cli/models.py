"""``edge models list`` and ``edge models install``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import edge.cli
from edge.asr.catalogue import CONFIG_KEYS, detect_kind, format_table, list_models
from edge.asr.install import ModelInstallError, install, progress_bar
from edge.cli.common import EXIT_FAIL, EXIT_OK, load
from edge.cli.config_edit import set_config_model
from edge.core.config import state_dir
from edge.core.errors import ConfigError


def run_list(args: argparse.Namespace) -> int:
    """Blocking: walks the installed models to measure them."""
    config = load(args)
    print(format_table(list_models(state_dir(config))))
    return EXIT_OK


def run_install(args: argparse.Namespace) -> int:
    """Blocking for the whole download and unpacking; with ``--set-config``, then
    rewrites the config file's model key."""
    config = load(args)
    edge.cli.setup_logging(config.log.level)
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
