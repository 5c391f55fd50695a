"""systemd's notification protocol over a plain unix datagram socket (no libsystemd).

``notify`` is a no-op outside systemd (``$NOTIFY_SOCKET`` unset). The unit is
``Type=notify``: the daemon sends ``READY=1`` once the model is loaded and the socket
bound, and ``WATCHDOG=1`` from the event loop, so a frozen loop gets restarted.
"""

from __future__ import annotations

import os
import socket

import trio


def _address(raw: str) -> str | bytes:
    # A leading "@" names an abstract socket (a NUL byte on the wire).
    return b"\0" + raw[1:].encode() if raw.startswith("@") else raw


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); returns False when not under systemd.

    Blocks only for a local datagram send. Errors are swallowed after the first
    attempt's OSError is reported to the caller as False: notification must never
    take the daemon down.
    """
    env = os.environ if environ is None else environ
    raw = env.get("NOTIFY_SOCKET")
    if not raw:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(raw))
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Half the watchdog period systemd asked for, in seconds; None if not asked."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        period = int(usec) / 1e6
    except ValueError:
        return None
    return period / 2 if period > 0 else None


async def keep_watchdog_fed(interval: float) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds from the event loop, forever.

    Runs on the loop on purpose: if the loop stalls, the pings stop and systemd
    restarts the service.
    """
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval)
