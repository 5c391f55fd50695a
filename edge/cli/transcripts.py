"""``edge transcripts list`` and ``edge transcripts show``: read the journal.

The journal is opened read-only: the daemon may be writing it at the same time. Each
read is recorded in the audit trail first (``transcript.list``, ``transcript.read``);
a read that cannot be recorded is refused.
"""

from __future__ import annotations

import argparse
import sys

from edge.cli.audit import open_readonly, record
from edge.cli.common import EXIT_FAIL, EXIT_OK, load, since_option
from edge.core.config import journal_path
from edge.journal import transcripts
from edge.journal.db import Journal


def _open_journal_readonly(args: argparse.Namespace, action: str,
                           object_: str | None = None) -> Journal | None:
    config = load(args)
    if journal_path(config).is_file() and not record(config, action, object=object_):
        return None
    return open_readonly(config)


def run_list(args: argparse.Namespace) -> int:
    since = since_option(args)
    journal = _open_journal_readonly(args, "transcript.list")
    if journal is None:
        return EXIT_FAIL
    with journal:
        print(transcripts.list_table(journal.sessions(since)))
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    journal = _open_journal_readonly(args, "transcript.read", args.session_id)
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
