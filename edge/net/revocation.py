"""The revocation watcher: reloads the revocation file and closes what it revokes.

A background service (run under the daemon's supervisor). A file that cannot be read
or parsed keeps the last good list (:class:`~edge.core.revocations.RevocationFile` says so
once); a file that becomes readable again is picked up at the next poll.
"""

from __future__ import annotations

import logging

import trio

from edge.core.admission import Admissions
from edge.core.revocations import RevocationFile

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0


class RevocationWatcher:
    def __init__(self, revocations: RevocationFile, admissions: Admissions, *,
                 poll: float = POLL_SECONDS) -> None:
        self.revocations = revocations
        self.admissions = admissions
        self.poll = poll

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Poll every ``poll`` seconds until cancelled (the reads run in a thread)."""
        task_status.started()
        while True:
            if await trio.to_thread.run_sync(self.revocations.reload_if_changed):
                closed = self.admissions.revoke_matching(self.revocations.current)
                logger.info("revocation list reloaded; closing %d live session(s)", closed)
            await trio.sleep(self.poll)
