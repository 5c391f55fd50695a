"""Claims of clients admitted from a trusted network (pure)."""

from __future__ import annotations

import pytest

from edge.core.auth import SCOPE_READ, SCOPE_WRITE
from edge.core.networks import CLAIMS_MARGIN, network_claims, network_lifetime


@pytest.mark.parametrize(("max_session", "warning"), [(3600.0, 60.0), (600.0, 0.0),
                                                      (60.0, 300.0)])
def test_the_session_limit_comes_before_the_claims_warn_or_expire(
        max_session: float, warning: float) -> None:
    now = 1_000_000.0
    claims = network_claims("wyoming", "127.0.0.1", now=now,
                            lifetime=network_lifetime(max_session, warning))
    # The session core warns ``expiry_warning`` before the expiry (plus its leeway).
    assert claims.expires_at - warning >= now + max_session + CLAIMS_MARGIN
    assert claims.sub == "wyoming@127.0.0.1"
    assert claims.scopes == {SCOPE_READ, SCOPE_WRITE}
