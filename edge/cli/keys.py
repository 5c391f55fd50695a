"""``edge keys init|status|rotate``: the data key that encrypts the journal and the
voiceprints (see :mod:`edge.crypto.datakey` for where it is kept), and
:func:`tool_key`, the key every other command reads the data with.

Blocking (files, ``clevis`` in a subprocess). Key material is never printed; keys are
told apart by their fingerprints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge.cli.common import EXIT_FAIL, EXIT_OK, load
from edge.core.config import Config, journal_path, state_dir, voiceprints_path
from edge.core.errors import ConfigError
from edge.core.fs import atomic_write
from edge.crypto import datakey
from edge.crypto.datakey import DataKey, DataKeyError, KeySource


def tool_key(config: Config) -> DataKey:
    """The data key for a command that reads or changes the data (``edge transcripts``,
    ``edge relay``, ``edge speakers``): the daemon's, or the development key that
    ``edge serve --dev`` made. Raises DataKeyError (exit 2)."""
    from edge.crypto.rotation import open_key

    return open_key(config, dev_existing=True)


def _sealing(args: argparse.Namespace) -> Any:
    from edge.crypto.rotation import Sealing

    thumbprints = tuple(args.tang_thp) if args.tang_thp else None
    if thumbprints is not None and len(thumbprints) != len(args.tang):
        raise ConfigError("--tang-thp", "give one thumbprint per --tang URL")
    return Sealing(tang=tuple(args.tang), tang_thumbprints=thumbprints, tpm2=args.tpm2,
                   threshold=args.threshold)


def run_init(args: argparse.Namespace) -> int:
    """Make a key and keep it: in a key file (``--file``), or sealed with Clevis."""
    config = load(args)
    sealing = _sealing(args)
    if bool(args.file) == (not sealing.empty):
        raise ConfigError("--tang", "give --file PATH, or --tang URL and/or --tpm2")
    try:
        existing: KeySource | None = datakey.locate(config)
    except DataKeyError:
        existing = None
    target = Path(args.file) if args.file else Path(
        args.jwe or config.journal.key_jwe or state_dir(config) / datakey.SEALED_NAME)
    if target.exists():
        raise ConfigError("--file" if args.file else "--jwe",
                          f"{target} exists: a key is never overwritten (it would make the "
                          "data unreadable); use `edge keys rotate` for a new key")
    if existing is not None and _has_data(config):
        raise ConfigError("journal.key_file", f"the data here is encrypted with the "
                          f"{existing.describe()}: use `edge keys rotate` for a new key")
    material = datakey.generate()
    if args.file:
        datakey.write_key_file(target, material)
        where = (f"key file {target}: set journal.key_file = \"{target}\" (or "
                 f"EDGE_JOURNAL_KEY_FILE), or load it into the unit as the credential "
                 f"journal-key. It is the key itself: keep it off the card in production")
    else:
        from edge.crypto.rotation import seal_new

        sealed = seal_new(material, sealing)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(target, sealed, mode=0o600)
        from edge.crypto import clevis

        where = f"Clevis-sealed key {target} ({clevis.pins(sealed).describe()})"
    key = DataKey(material, KeySource(datakey.FILE, target, "journal.key_file"))
    print(f"made key {key.fingerprint}: {where}")
    from edge.cli.audit import record

    record(config, "key.init", object=key.fingerprint, create=False)
    return EXIT_OK


def _has_data(config: Config) -> bool:
    return journal_path(config).exists() or voiceprints_path(config).exists()


def run_status(args: argparse.Namespace) -> int:
    """Where the key comes from, and whether it opens the journal and the voiceprints.
    Exit 0 when it does, 1 when it does not or cannot be read, 2 when there is none."""
    from edge.crypto.rotation import _store_opens, open_key
    from edge.journal.db import JournalError, key_opens

    config = load(args)
    report: dict[str, Any] = {}
    source = datakey.locate(config, dev_existing=True)
    report["source"] = source.describe()
    report["kind"] = source.kind
    if source.sealed and source.path.is_file():
        from edge.crypto import clevis

        try:
            report["sealed_with"] = clevis.pins(source.path.read_bytes()).describe()
        except (clevis.ClevisError, OSError) as exc:
            report["sealed_with"] = f"unreadable: {exc}"
    ok = True
    try:
        key = open_key(config, dev_existing=True)
    except DataKeyError as exc:
        report["error"] = str(exc)
        ok = False
    else:
        report["fingerprint"] = key.fingerprint
        try:
            opens = key_opens(journal_path(config), key)
        except JournalError as exc:
            opens, report["journal_error"] = False, str(exc)
        report["journal"] = {None: "none (or not encrypted yet)", True: "opens",
                             False: "does NOT open"}[opens]
        store = _store_opens(voiceprints_path(config), key)
        report["voiceprints"] = {None: "none (or not encrypted yet)", True: "opens",
                                 False: "does NOT open"}[store]
        ok = opens is not False and store is not False
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name, value in report.items():
            print(f"{name + ':':<14}{value}")
    return EXIT_OK if ok else EXIT_FAIL


def run_rotate(args: argparse.Namespace) -> int:
    """Re-encrypt the journal and voiceprints under a new key (the daemon stopped)."""
    from edge.crypto.rotation import rotate

    config = load(args)
    sealing = _sealing(args)
    try:
        old, new = rotate(config, sealing=None if sealing.empty else sealing)
    except DataKeyError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"rotated: {new.describe()} now holds key {new.fingerprint} (was "
          f"{old.fingerprint}); the journal and voiceprints are re-encrypted")
    from edge.cli.audit import record

    record(config, "key.rotate", object=new.fingerprint, create=False,
           detail={"previous": old.fingerprint})
    return EXIT_OK

