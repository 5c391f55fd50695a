"""``edge models list`` and ``edge models install``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import edge.cli
from edge.asr.catalogue import CONFIG_KEYS, detect_kind, format_table, list_models
from edge.asr.install import ModelInstallError, install, progress_bar
from edge.cli.common import EXIT_FAIL, EXIT_OK, load
from edge.cli.config_edit import add_config_language, check_language_free, set_config_model
from edge.core.config import state_dir
from edge.core.errors import ConfigError
from edge.core.languages import is_language_tag, normal_tag, primary_language
from edge.core.model_table import source_language


def run_list(args: argparse.Namespace) -> int:
    """Blocking: walks the installed models to measure them."""
    config = load(args)
    print(format_table(list_models(state_dir(config))))
    return EXIT_OK


def run_install(args: argparse.Namespace) -> int:
    """Blocking for the whole download and unpacking; with ``--set-config``, then
    rewrites the config file's model key, with ``--language TAG`` adds the model to its
    ``[recognizer.models]`` (checked before the download: a language served already
    needs ``--force``)."""
    config = load(args)
    edge.cli.setup_logging(config.log.level)
    language = _language_option(args)
    if (args.set_config or language) and not args.config:
        option = "--language" if language else "--set-config"
        raise ConfigError("--config", f"{option} needs the config file to change")
    if language:
        check_language_free(Path(args.config), language, force=args.force)
    try:
        path = install(args.source, state_dir(config), sha256=args.sha256,
                       progress=progress_bar(sys.stderr))
    except ModelInstallError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(path)
    kind = detect_kind(path) or "asr"
    if language:
        if kind != "asr":
            raise ConfigError("--language", f"{path.name} is a speaker model (installed; "
                              "set recognizer.speaker_model, or use --set-config)")
        said = add_config_language(Path(args.config), language, str(path), force=args.force)
        print(f"edge: {args.config}: {said}", file=sys.stderr)
        named = source_language(str(path))
        if named is not None and primary_language(named) != primary_language(language):
            print(f"edge: warning: {path.name}'s name says {named}, not {language}: "
                  f"sessions asking for {language} get its guesses", file=sys.stderr)
    elif args.set_config:
        set_config_model(Path(args.config), CONFIG_KEYS[kind], str(path))
        print(f"edge: {args.config}: {CONFIG_KEYS[kind]} = {path}", file=sys.stderr)
    return EXIT_OK


def _language_option(args: argparse.Namespace) -> str | None:
    """``--language``, as a normal tag (``en-US``); ConfigError naming it otherwise."""
    if args.language is None:
        if args.force:
            raise ConfigError("--force", "goes with --language")
        return None
    if not is_language_tag(args.language):
        raise ConfigError("--language", f"must be a language tag such as ko or en-US, got "
                          f"{args.language!r}")
    return normal_tag(args.language)
