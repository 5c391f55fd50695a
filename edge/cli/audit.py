"""``edge audit list`` and ``edge audit verify``: read and check the audit trail; and
:func:`record`, with which the commands that read or change patient data on the device
record themselves (peer ``cli``, ``sub`` ``unix:<user>``).

Reading opens the journal read-only (the daemon may be writing it). Recording writes
beside a running daemon (SQLite WAL; the chain's order is SQLite's write lock's).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from typing import Any

from edge.cli.common import EXIT_FAIL, EXIT_OK, load, since_option
from edge.cli.keys import tool_key
from edge.core.audit import OK, Access
from edge.core.config import Config, journal_path
from edge.core.keys import device_id
from edge.journal.audit import Filter
from edge.journal.db import Journal, JournalError, audit_into
from edge.protocols.audit import AuditRecord


def cli_user() -> str:
    """Who runs the command: the user behind ``sudo`` if any, else the process's."""
    user = os.environ.get("SUDO_USER")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid-{os.getuid()}"
    return f"unix:{user}"


def record(config: Config, action: str, *, object: str | None = None,
           outcome: str = OK, detail: dict[str, str | int] | None = None,
           create: bool = True) -> bool:
    """Append one record of this command's act to the trail; whether it is recorded
    (an error is printed when not). With the journal off there is no trail: True.
    ``create=False`` records only into a journal that exists. Blocking."""
    if not config.journal.enabled:
        return True
    path = journal_path(config)
    if not create and not path.is_file():
        return True
    access = Access(action, outcome=outcome, sub=cli_user(), object=object, peer="cli",
                    detail=detail or {})
    entries = [(access, time.time())]
    key = tool_key(config)
    try:
        # Beside a running daemon, without re-checking the whole file; an older file
        # (or none yet) is opened as the daemon opens it, which migrates or creates it.
        if not path.is_file() or audit_into(path, key, entries) is None:
            with Journal.open(path, device_id=device_id(config), key=key) as j:
                j.audit_append(entries)
    except JournalError as exc:
        print(f"edge: cannot record {action} in the audit trail: {exc}", file=sys.stderr)
        return False
    return True


def open_readonly(config: Config) -> Journal | None:
    """The journal, read-only, for a command; None (said on stderr) when it cannot open."""
    try:
        return Journal.open(journal_path(config), device_id=device_id(config),
                            key=tool_key(config), readonly=True)
    except JournalError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return None


def _line(r: AuditRecord) -> dict[str, Any]:
    """A record as ``--json`` prints it: its wire form, ``time`` in ISO 8601 UTC and
    ``unix_time`` (from which the hash's ``time_ms`` is computed)."""
    iso = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.time))
           + f".{round(r.time * 1000) % 1000:03d}Z")
    return {**r.to_wire(), "time": iso, "unix_time": r.time}


def run_list(args: argparse.Namespace) -> int:
    since = since_option(args)
    journal = open_readonly(load(args))
    if journal is None:
        return EXIT_FAIL
    which = Filter(since=since, sub=args.sub, object=args.session, device_id=args.device,
                   limit=args.limit)
    with journal:
        rows = journal.audit_records(which)
    if args.json:
        for r in rows:
            print(json.dumps(_line(r), ensure_ascii=False))
        return EXIT_OK
    print(f"{'SEQ':>7}  {'TIME (UTC)':<20} {'SUB':<20} {'ACTION':<18} {'OBJECT':<38} "
          f"{'OUTCOME':<8} PEER")
    for r in rows:
        outcome = r.outcome if r.reason is None else f"{r.outcome}:{r.reason}"
        count = f" x{r.detail['count']}" if "count" in r.detail else ""
        print(f"{r.seq:>7}  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(r.time)):<20} "
              f"{r.sub or '-':<20.20} {r.action:<18.18} {r.object or '-':<38.38} "
              f"{outcome:<8} {r.peer or '-'}{count}")
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the chain holds, 1 naming the first broken or missing record."""
    journal = open_readonly(load(args))
    if journal is None:
        return EXIT_FAIL
    with journal:
        count, fault = journal.audit_verify(args.device)
        head = journal.audit_head()
    whose = f"the records relayed from {args.device}" if args.device else "the audit trail"
    if fault is not None:
        print(f"edge: {whose} is broken: {fault}", file=sys.stderr)
        return EXIT_FAIL
    last = "" if args.device else f", up to record {head.seq}"
    print(f"{whose}: {count} record(s) intact{last}")
    return EXIT_OK
