"""One token extraction for every endpoint, with each protocol's places (pure)."""

from __future__ import annotations

import pytest

from edge.core.errors import AuthError
from edge.core.tokens import BEARER, TokenPlaces, extract_token
from edge.protocols.assemblyai import CLOSE_NOT_AUTHORIZED
from edge.protocols.assemblyai import TOKEN_PLACES as ASSEMBLYAI
from edge.protocols.scriptix import TOKEN_PLACES as SCRIPTIX

Headers = list[tuple[bytes, bytes]]


def auth(value: bytes) -> Headers:
    return [(b"Authorization", value)]


# (target, headers, token for BEARER, for ASSEMBLYAI, for SCRIPTIX); a token, or the
# (status, code) of the refusal.
CASES: list[tuple[str, Headers, object, object, object]] = [
    ("/p?token=T1", [], "T1", "T1", "T1"),
    ("/p?token=%20T1%20", [], "T1", "T1", "T1"),
    ("/p", auth(b"Bearer T1"), "T1", "T1", "T1"),
    ("/p", auth(b"bEaReR  T1 "), "T1", "T1", "T1"),
    ("/p", auth(b"T1"), (401, "invalid_token"), "T1", (401, "invalid_token")),
    ("/p", auth(b"Basic dTpw"), (401, "invalid_token"), (401, "invalid_token"),
     (401, "invalid_token")),
    ("/p", [(b"x-api-key", b"T1")], (401, "missing_token"), (401, "missing_token"), "T1"),
    ("/p", [], (401, "missing_token"), (401, "missing_token"), (401, "missing_token")),
    ("/p?tokens=T1", [(b"x-token", b"T1")], (401, "missing_token"), (401, "missing_token"),
     (401, "missing_token")),
    ("/p?token=", [], (401, "invalid_token"), (401, "invalid_token"), (401, "invalid_token")),
    ("/p", auth(b"Bearer"), (401, "invalid_token"), (401, "invalid_token"),
     (401, "invalid_token")),
    ("/p", auth(b"Bearer T1 T2"), (401, "invalid_token"), (401, "invalid_token"),
     (401, "invalid_token")),
    ("/p?token=T1", auth(b"Bearer T1"), (400, "invalid_request"), (400, "invalid_request"),
     "T1"),
    ("/p?token=T1", auth(b"Bearer T2"), (400, "invalid_request"), (400, "invalid_request"),
     (400, "invalid_request")),
    ("/p?token=T1&token=T1", [], (400, "invalid_request"), (400, "invalid_request"), "T1"),
    ("/p", auth(b"Bearer T1") + auth(b"Bearer T2"), (400, "invalid_request"),
     (400, "invalid_request"), (400, "invalid_request")),
    ("/p?token=", [(b"x-zoom-s2t-key", b"T1")], (401, "invalid_token"),
     (401, "invalid_token"), (401, "invalid_token")),
]


@pytest.mark.parametrize(("target", "headers", "bearer", "assemblyai", "scriptix"), CASES)
def test_places(target: str, headers: Headers, bearer: object, assemblyai: object,
                scriptix: object) -> None:
    for places, expected in ((BEARER, bearer), (ASSEMBLYAI, assemblyai),
                             (SCRIPTIX, scriptix)):
        if isinstance(expected, str):
            assert extract_token(target, headers, places) == expected
            continue
        with pytest.raises(AuthError) as info:
            extract_token(target, headers, places)
        error = info.value
        assert (error.status, error.code) == expected, (places, target, headers)
        assert error.close_code == places.close_code
        assert "T1" not in error.message and "T2" not in error.message


def test_each_protocol_closes_with_its_own_code() -> None:
    assert BEARER.close_code == 1002
    assert ASSEMBLYAI.close_code == CLOSE_NOT_AUTHORIZED == 4001
    assert SCRIPTIX.close_code == 1002


def test_a_request_without_a_token_is_told_where_to_put_it() -> None:
    places = TokenPlaces(headers=(b"x-api-key",))
    with pytest.raises(AuthError) as info:
        extract_token("/p", [], places)
    assert info.value.message == ("a token is required: ?token=, Authorization: Bearer or "
                                  "the x-api-key header")
