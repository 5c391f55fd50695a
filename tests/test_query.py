"""Query parameters, read once for every dialect, and their errors as a refused handshake."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edge.core.close_codes import CLOSE_POLICY
from edge.core.errors import ProtocolError, Refusal
from edge.protocols.query import bad_request, optional, single

QUERY = {"a": ["1"], "blank": [""], "twice": ["1", "2"]}


@pytest.mark.parametrize(("name", "value"), [("a", "1"), ("blank", ""), ("absent", None)])
def test_optional(name: str, value: str | None) -> None:
    assert optional(QUERY, name) == value


def test_single_is_for_a_parameter_that_is_there() -> None:
    assert single(QUERY, "a") == "1"
    with pytest.raises(KeyError):
        single(QUERY, "absent")


@pytest.mark.parametrize("read", [optional, single])
@pytest.mark.parametrize("close_code", [CLOSE_POLICY, 3006])
def test_a_repeated_parameter_is_refused_by_name(read: Callable[..., str | None],
                                                 close_code: int) -> None:
    with pytest.raises(ProtocolError) as info:
        read(QUERY, "twice", close_code=close_code)
    assert (info.value.code, info.value.close_code) == ("invalid_parameter", close_code)
    assert info.value.message == "twice given more than once"


def test_bad_request_refuses_the_handshake_with_400() -> None:
    with pytest.raises(Refusal) as info, bad_request(3006):
        raise ProtocolError("invalid_parameter", "sample_rate must be ...")
    error = info.value
    assert (error.status, error.close_code, error.code) == (400, 3006, "invalid_parameter")
    assert error.message == "sample_rate must be ..."
    assert error.__suppress_context__


def test_bad_request_lets_other_errors_through() -> None:
    with pytest.raises(ValueError), bad_request(CLOSE_POLICY):
        raise ValueError("not a parameter")
    with bad_request(CLOSE_POLICY):
        pass
