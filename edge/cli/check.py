"""``edge check``: check config, keys, model, clock and port; exit 1 if anything must be
fixed. The checks themselves are :mod:`edge.ops.check`."""

from __future__ import annotations

import argparse

from edge.cli.common import EXIT_FAIL, EXIT_OK, load
from edge.ops.check import FAIL, memory_limits, run_checks


def run(args: argparse.Namespace) -> int:
    """Blocking: loads the model unless ``--no-load``."""
    config = load(args, **{"recognizer.model": args.model})
    if args.memory_limits:  # for systemd/install.sh: the unit's lines, nothing else
        limits, _ = memory_limits(config)
        print(limits.unit_lines(), end="")
        return EXIT_OK
    findings = run_checks(config, load=not args.no_load)
    for finding in findings:
        print(finding.line())
    failed = [f for f in findings if f.level == FAIL]
    print(f"{len(failed)} problem(s) to fix" if failed else "all checks passed")
    return EXIT_FAIL if failed else EXIT_OK
