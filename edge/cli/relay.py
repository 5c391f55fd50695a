"""``edge relay set-aside`` and ``edge relay requeue``: the events the relay set aside.

A consumer that refuses events for good (invalid, a device outside its allow-list)
says so in its receipt, and an event too large to send on its own never leaves; the
relay sets those events aside (see :mod:`edge.journal.outbox`) so that the outbox moves
on. ``set-aside`` lists them (ids, sessions, reasons; never their content) from a
read-only look at the journal; ``requeue`` puts them back in the outbox, and the
running daemon's relay sends them at its next pass (within a second when idle).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from edge.cli.audit import record
from edge.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, load
from edge.cli.keys import tool_key
from edge.core.config import journal_path
from edge.core.keys import device_id
from edge.journal.db import Journal, JournalError


def run_list(args: argparse.Namespace) -> int:
    config = load(args)
    try:
        journal = Journal.open(journal_path(config), device_id=device_id(config),
                               key=tool_key(config), readonly=True)
    except JournalError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_FAIL
    with journal:
        rows = journal.set_aside_events(args.limit)
    if args.json:
        print(json.dumps([{"id": r.id, "device_id": r.device_id, "session_id": r.session_id,
                           "seq": r.seq, "kind": r.kind, "bytes": r.size,
                           "reason": r.reason, "at": r.at} for r in rows], indent=1))
        return EXIT_OK
    if not rows:
        print("no events set aside")
        return EXIT_OK
    print(f"{'id':>8}  {'device':<16} {'session':<38} {'seq':>5} {'kind':<6} {'bytes':>8}"
          f"  {'reason':<20} set aside (UTC)")
    for r in rows:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.at))
        print(f"{r.id:>8}  {r.device_id:<16.16} {r.session_id:<38.38} {r.seq:>5} "
              f"{r.kind:<6} {r.size:>8}  {r.reason:<20.20} {at}")
    return EXIT_OK


def run_requeue(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all):
        print("edge: give event ids or --all", file=sys.stderr)
        return EXIT_USAGE
    config = load(args)
    path = journal_path(config)
    if not path.is_file():
        print(f"edge: no journal at {path}", file=sys.stderr)
        return EXIT_FAIL
    try:
        with Journal.open(path, device_id=device_id(config),
                          key=tool_key(config)) as journal:
            count = journal.requeue(None if args.all else args.ids)
    except JournalError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_FAIL
    record(config, "relay.requeue", object="all" if args.all else None,
           detail={"events": count} if args.all else
           {"events": count, "ids": ",".join(map(str, args.ids))[:200]})
    print(f"re-queued {count} event(s); the relay sends them at its next pass")
    return EXIT_OK
