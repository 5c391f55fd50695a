"""The device's term list (``[terms]``): opened at start, reread when its file changes.

A background service like the revocation watcher (:mod:`edge.net.revocation`): it polls
the file's stat and replaces the list in force when the content changed and can be
used; a file that cannot be used keeps the previous list, and the log says why
(:class:`~edge.core.terms.TermFile`). Finals made after a reload carry the new list's
terms, in live sessions too.
"""

from __future__ import annotations

import logging

import trio

from edge.core.config import Config
from edge.core.errors import ConfigError
from edge.core.terms import FixedTerms, TermFile, TermListError, TermMatcher, builtin_terms

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0


async def open_terms(config: Config) -> FixedTerms | TermFile | None:
    """The list in force at start (None: ``terms.enabled`` is false). A file that cannot
    be used raises :class:`ConfigError` naming ``terms.file`` (exit 2). Reads in a
    worker thread."""
    t = config.terms
    if not t.enabled:
        logger.info("terms off (terms.enabled = false): finals carry no terms")
        return None
    if not t.file:
        matcher = await trio.to_thread.run_sync(lambda: TermMatcher(builtin_terms()))
        logger.info("terms: the starter list shipped with edge, %d terms (%s)",
                    len(matcher), ", ".join(matcher.languages))
        return FixedTerms(matcher)
    try:
        terms = await trio.to_thread.run_sync(TermFile, t.file)
    except TermListError as exc:
        raise ConfigError("terms.file", str(exc)) from None
    logger.info("terms: %d terms (%s) from %s, reread when it changes", len(terms.current),
                ", ".join(terms.current.languages) or "none", terms.path)
    return terms


class TermWatcher:
    def __init__(self, terms: TermFile, *, poll: float = POLL_SECONDS) -> None:
        self.terms = terms
        self.poll = poll

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Poll every ``poll`` seconds until cancelled (the reads run in a thread)."""
        task_status.started()
        while True:
            await trio.sleep(self.poll)
            if await trio.to_thread.run_sync(self.terms.reload_if_changed):
                logger.info("term list %s reloaded: %d terms", self.terms.path,
                            len(self.terms.current))
