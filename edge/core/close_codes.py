"""WebSocket close codes (RFC 6455 section 7.4.1 and IANA's registry) the daemon sends.

The Live API uses them as they are; a peer dialect maps them to its own where its
clients expect others (AssemblyAI's 3000s and 4000s, vosk-server's 1008).
"""

from __future__ import annotations

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_AUTH = CLOSE_PROTOCOL_ERROR  # the Live API's clients read 1002 as "authentication failed"
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008  # scope, session length, rate of messages
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012  # the daemon is stopping or restarting: reconnect soon
CLOSE_TRY_AGAIN_LATER = 1013  # capacity and limits
