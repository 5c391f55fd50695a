"""What every ``edge`` command shares: exit codes, loading the config, reading phrases.

Light on purpose (argparse, json and edge.core only): the parser imports it, and
``edge --version`` or ``edge token`` must not pay for vosk, numpy or PyAudio.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.core.config import Config, load_config
from edge.core.errors import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def load(args: argparse.Namespace, **overrides: Any) -> Config:
    """The config from ``--config`` (or ``$EDGE_CONFIG``), with the flags that were given
    as ``overrides`` (``None`` means not given). Raises :class:`ConfigError`."""
    overrides["log.level"] = getattr(args, "log_level", None)
    return load_config(args.config, overrides=overrides)


def read_phrases(path: Path | None) -> list[str] | None:
    """The phrase list in a JSON file (a list, or ``{"grammar": [...]}``), without
    ``[unk]``; ``None`` without a file. Raises :class:`ConfigError` naming ``--phrases``."""
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


def since_option(args: argparse.Namespace) -> float | None:
    """``--since`` as a Unix time (None: not given); a bad value names the option."""
    from edge.journal.transcripts import parse_since

    if not args.since:
        return None
    try:
        return parse_since(args.since)
    except ValueError as exc:
        raise ConfigError("--since", str(exc)) from None
