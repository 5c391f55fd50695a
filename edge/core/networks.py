"""Admitting clients of protocols that carry no token (vosk-server's, Wyoming's).

Such a client is admitted only as the operator allows: from an address in the
protocol's ``trusted_networks`` (loopback by default). It gets claims that say where it
came from (``sub`` = ``vosk_server@192.168.1.20``), so that the journal and the log
record it, with the scopes of a client streaming its own audio and reading its own
transcript, and a lifetime of one session. Pure.
"""

from __future__ import annotations

import ipaddress

from edge.core.auth import SCOPE_READ, SCOPE_WRITE, Claims
from edge.core.close_codes import CLOSE_POLICY
from edge.core.config import parse_networks
from edge.core.errors import Refusal


class TrustedNetworks:
    """The networks in a config key's comma-separated list (ConfigError naming it)."""

    def __init__(self, key: str, text: str) -> None:
        self.key = key
        self.networks = parse_networks(key, text)

    def admits(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def check(self, dialect: str, host: str) -> None:
        """Raise Refusal (403) unless ``host`` is trusted."""
        if not self.admits(host):
            raise Refusal("untrusted_network", f"{dialect} clients are admitted only from "
                            f"{self.key}; this address is not in it", status=403,
                            close_code=CLOSE_POLICY)


#: How long network claims outlive the session-length limit and the expiry warning.
CLAIMS_MARGIN = 60.0


def network_lifetime(max_session_seconds: float, expiry_warning: float) -> float:
    """How long the claims of a client from a trusted network last: past
    ``server.max_session_seconds`` by ``auth.expiry_warning`` and :data:`CLAIMS_MARGIN`,
    so that the session ends at its length limit before its claims warn of, or reach,
    their expiry."""
    return max_session_seconds + expiry_warning + CLAIMS_MARGIN


def network_claims(dialect: str, host: str, *, now: float, lifetime: float) -> Claims:
    """The claims of an unauthenticated client admitted from a trusted network
    (``lifetime``: :func:`network_lifetime`)."""
    return Claims(sub=f"{dialect}@{host}", scopes=frozenset({SCOPE_READ, SCOPE_WRITE}),
                  user_type="network", issued_at=now, expires_at=now + lifetime)
