"""Dialects through the relay: a device's sessions relayed to a real upstream server
(its own SQLite journal, its ingest endpoint on 127.0.0.1) keep the dialect they spoke."""

from __future__ import annotations

from typing import Any

import trio
from test_relay import Node, drained, pair, relay_to

from edge.journal.transcripts import list_table

__all__ = ["pair"]  # the fixture, used by name


async def test_relayed_sessions_keep_their_dialect(
    nursery: trio.Nursery, start_server: Any, pair: tuple[Node, Node],
) -> None:
    a, b = pair
    spoke = {"aai": "assemblyai", "vosk": "vosk_server", "plain": None}
    for n, (session_id, dialect) in enumerate(spoke.items()):
        a.journal.start_session(session_id, source="client", sub="dr-lee",
                                started_at=1.0 + n, dialect=dialect)
        a.journal.end_session(session_id, reason="end", ended_at=10.0 + n)
    a.journal.start_session("mic", source="room", sub=None, started_at=5.0)
    a.journal.end_session("mic", reason="end", ended_at=15.0)

    with trio.fail_after(60):
        server_b = await start_server(journal_service=b.service)
        relay = relay_to(server_b.port, a)
        await nursery.start(relay.run)
        await drained(a, relay)

    relayed = {r.session_id: r for r in b.journal.sessions(device_id="room-a")}
    assert {s: (r.source, r.dialect) for s, r in relayed.items()} == {
        "aai": ("relay", "assemblyai"), "vosk": ("relay", "vosk_server"),
        "plain": ("relay", "live"), "mic": ("relay", None)}
    table = {line.split()[0]: line.split()[3]
             for line in list_table(list(relayed.values())).splitlines()[1:]}
    assert table == {"aai": "assemblyai", "vosk": "vosk_server", "plain": "live", "mic": "-"}
