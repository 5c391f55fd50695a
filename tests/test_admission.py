"""Admission: the global session cap, per-subject limits, revocation of live sessions."""

from __future__ import annotations

import pytest

from edge.core.admission import Admission, Ticket
from edge.core.auth import Claims
from edge.core.close_codes import CLOSE_TRY_AGAIN_LATER
from edge.core.errors import Refusal
from edge.core.revocations import Revocations


def claims(sub: str = "user-1", *, jti: str | None = None,
           session_limit: int | None = None) -> Claims:
    return Claims(sub=sub, scopes=frozenset({"transcription:write"}), user_type="doctor",
                  issued_at=1_700_000_000.0, expires_at=1_700_003_600.0, jti=jti,
                  session_limit=session_limit)


def nothing() -> None:
    pass


class Recorder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_admit_counts_sessions() -> None:
    a = Admission(max_sessions=3, retry_after=30)
    assert a.current == 0
    t1 = a.admit("s1", claims("alice"), nothing)
    t2 = a.admit("s2", claims("alice"), nothing)
    t3 = a.admit("s3", claims("bob"), nothing)
    assert isinstance(t1, Ticket)
    assert t1.session_id == "s1"
    assert t3.claims.sub == "bob"
    assert a.current == 3
    assert a.sessions_of("alice") == 2
    assert a.sessions_of("bob") == 1
    assert a.sessions_of("carol") == 0
    assert t2 is not t1


def test_global_cap() -> None:
    a = Admission(max_sessions=2, retry_after=17)
    a.admit("s1", claims("a"), nothing)
    a.admit("s2", claims("b"), nothing)
    with pytest.raises(Refusal) as info:
        a.admit("s3", claims("c"), nothing)
    exc = info.value
    assert exc.status == 429
    assert exc.close_code == CLOSE_TRY_AGAIN_LATER == 1013
    assert exc.retry_after == 17
    assert exc.code == "server_busy"
    assert a.current == 2
    assert a.sessions_of("c") == 0


def test_session_limit_per_subject() -> None:
    a = Admission(max_sessions=10, retry_after=5)
    a.admit("s1", claims("alice", session_limit=2), nothing)
    a.admit("s2", claims("alice", session_limit=2), nothing)
    with pytest.raises(Refusal) as info:
        a.admit("s3", claims("alice", session_limit=2), nothing)
    exc = info.value
    assert exc.status == 429
    assert exc.close_code == 1013
    assert exc.retry_after == 5
    assert exc.code == "session_limit"
    assert "2" in exc.message
    # Another subject is not affected, nor are tokens without a limit.
    a.admit("s4", claims("bob", session_limit=1), nothing)
    a.admit("s5", claims("alice"), nothing)
    assert a.current == 4
    assert a.sessions_of("alice") == 3


def test_session_limit_counts_every_token_of_the_subject() -> None:
    a = Admission(max_sessions=10, retry_after=5)
    a.admit("s1", claims("alice"), nothing)
    with pytest.raises(Refusal):
        a.admit("s2", claims("alice", session_limit=1), nothing)


def test_global_cap_is_checked_before_session_limit() -> None:
    a = Admission(max_sessions=1, retry_after=5)
    a.admit("s1", claims("alice", session_limit=1), nothing)
    with pytest.raises(Refusal) as info:
        a.admit("s2", claims("alice", session_limit=1), nothing)
    assert info.value.code == "server_busy"


def test_release_on_ticket_exit() -> None:
    a = Admission(max_sessions=1, retry_after=30)
    with a.admit("s1", claims("alice", session_limit=1), nothing) as ticket:
        assert isinstance(ticket, Ticket)
        assert a.current == 1
        with pytest.raises(Refusal):
            a.admit("s2", claims("bob"), nothing)
    assert a.current == 0
    assert a.sessions_of("alice") == 0
    with a.admit("s2", claims("alice", session_limit=1), nothing):
        assert a.current == 1


def test_release_when_block_raises() -> None:
    a = Admission(max_sessions=1, retry_after=30)
    with pytest.raises(RuntimeError, match="session crashed"), \
            a.admit("s1", claims("alice"), nothing):
        raise RuntimeError("session crashed")
    assert a.current == 0
    assert a.sessions_of("alice") == 0
    a.admit("s2", claims("alice"), nothing)


def test_release_is_idempotent() -> None:
    a = Admission(max_sessions=5, retry_after=30)
    first = a.admit("s1", claims("alice"), nothing)
    a.admit("s2", claims("alice"), nothing)
    with first:
        pass
    with first:
        pass
    first.__exit__(None, None, None)
    assert a.current == 1
    assert a.sessions_of("alice") == 1


def test_released_session_is_not_revoked() -> None:
    a = Admission(max_sessions=5, retry_after=30)
    gone = Recorder()
    with a.admit("s1", claims("alice", jti="j1"), gone):
        pass
    assert a.revoke_matching(Revocations(jtis=frozenset({"j1"}))) == 0
    assert gone.calls == 0


def test_revoke_matching() -> None:
    a = Admission(max_sessions=10, retry_after=30)
    by_jti, by_sub_1, by_sub_2, other, no_jti = (Recorder() for _ in range(5))
    a.admit("s1", claims("alice", jti="j-alice"), by_jti)
    a.admit("s2", claims("bob", jti="j-bob-1"), by_sub_1)
    a.admit("s3", claims("bob", jti="j-bob-2"), by_sub_2)
    a.admit("s4", claims("carol", jti="j-carol"), other)
    a.admit("s5", claims("dave"), no_jti)
    revocations = Revocations(jtis=frozenset({"j-alice", "j-unknown"}),
                              subs=frozenset({"bob", "erin"}))
    assert a.revoke_matching(revocations) == 3
    assert (by_jti.calls, by_sub_1.calls, by_sub_2.calls) == (1, 1, 1)
    assert other.calls == 0
    assert no_jti.calls == 0
    # Revoking asks the sessions to close; the places are freed when they do.
    assert a.current == 5


def test_revoke_matching_from_parsed_list() -> None:
    a = Admission(max_sessions=10, retry_after=30)
    hit, miss = Recorder(), Recorder()
    a.admit("s1", claims("alice", jti="abc"), hit)
    a.admit("s2", claims("bob", jti="sub:alice"), miss)
    assert a.revoke_matching(Revocations.parse("# revoked\nabc\n")) == 1
    assert (hit.calls, miss.calls) == (1, 0)


def test_revoke_matching_nothing() -> None:
    a = Admission(max_sessions=10, retry_after=30)
    r = Recorder()
    a.admit("s1", claims("alice", jti="j1"), r)
    assert a.revoke_matching(Revocations()) == 0
    assert Admission(max_sessions=1, retry_after=1).revoke_matching(
        Revocations(subs=frozenset({"alice"}))) == 0
    assert r.calls == 0


def test_a_revocation_during_the_handshake_reaches_the_connection_once_it_exists() -> None:
    from edge.net.connection import Connection, Stop
    from edge.net.door import Handle as _Handle

    class Recorded(Connection):
        def __init__(self) -> None:  # no socket: only stop() is called
            self.stops: list[str] = []

        def stop(self, stop: Stop) -> None:
            self.stops.append(stop.reason)

    early, late = _Handle(), _Handle()
    early.revoke()  # the list changed while the handshake was being accepted
    a, b = Recorded(), Recorded()
    early.attach(a)
    late.attach(b)
    assert (a.stops, b.stops) == (["revoked"], [])
    late.revoke()
    assert b.stops == ["revoked"]
