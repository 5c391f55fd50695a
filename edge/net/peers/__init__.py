"""Peer protocols: the routes and listeners through which clients written for other
streaming services reach the session core.

Each peer has a pure dialect in :mod:`edge.protocols` (frames <-> events) and a module
here that admits its clients (tokens, or trusted networks for protocols without them)
and hands them a dialect: AssemblyAI and Scriptix on WebSocket paths of the main port,
vosk-server on a WebSocket port of its own, Wyoming on a TCP port of its own. A peer
whose section says ``enabled = false`` is never imported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import trio

from edge.core.auth import SCOPE_WRITE, AuthSettings
from edge.core.config import Config
from edge.net.routes import HttpRoute, Route
from edge.net.server import Server
from edge.ops.supervisor import Supervisor


@dataclass(frozen=True)
class PeerContext:
    """What the peers' modules need of the daemon to admit and describe sessions."""

    auth: AuthSettings  # to mint AssemblyAI's temporary tokens (HS256 devices)
    model_name: str
    model_sample_rate: int


def main_port_routes(config: Config, context: PeerContext) -> list[Route | HttpRoute]:
    """The peer protocols' rows of the main port's table."""
    rows: list[Route | HttpRoute] = []
    if config.assemblyai.enabled:
        import edge.net.peers.assemblyai as assemblyai

        rows += assemblyai.routes(config, context)
    if config.scriptix.enabled:
        import edge.net.peers.scriptix as scriptix

        rows += scriptix.routes(config, context)
    return rows


async def start_listeners(nursery: trio.Nursery, supervisor: Supervisor, server: Server,
                          config: Config, context: PeerContext) -> None:
    """The peer protocols that listen on ports of their own, as supervised services.
    Their bound ports are in ``server.peer_ports`` once this returns."""
    if config.vosk_server.enabled:
        import edge.net.peers.vosk_server as vosk_server

        v = config.vosk_server
        await supervisor.start(nursery, "vosk_server", functools.partial(
            _serve_port, server, "vosk_server", v.host, v.port,
            Route("/", vosk_server.route(config, context), action="session.start",
                  scope=SCOPE_WRITE, prefix=True)))
    if config.wyoming.enabled:
        import edge.net.peers.wyoming as wyoming

        service = wyoming.WyomingListener(config, context, server)
        await supervisor.start(nursery, "wyoming", service.run)


async def _serve_port(server: Server, name: str, host: str, port: int, route: Route, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    async with trio.open_nursery() as nursery:
        server.peer_ports[name] = await nursery.start(server.serve_port, host, port, route)
        task_status.started()
