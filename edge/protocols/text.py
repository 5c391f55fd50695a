"""JSON text frames from peers, read once and safely (pure).

Every dialect reads its control messages the same way: a bound on the length first,
then ``json.loads`` (whose ``ValueError`` also covers integers past Python's 4,300-digit
limit, and whose ``RecursionError`` covers absurd nesting), then a check that the value
is an object. What a failure means to the client is each protocol's own business, so
the reason comes back as a value the caller maps to its own error.
"""

from __future__ import annotations

import json
from typing import Any, Literal


class JsonTextError(ValueError):
    """``reason``: ``too_long``, ``not_json`` (or not decodable at all) or ``not_object``."""

    def __init__(self, reason: Literal["too_long", "not_json", "not_object"],
                 value: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value  # the decoded value, for not_object


def json_object(text: str, max_chars: int) -> dict[str, Any]:
    """``text`` as a JSON object, or :class:`JsonTextError`."""
    if len(text) > max_chars:
        raise JsonTextError("too_long")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise JsonTextError("not_json") from None
    if not isinstance(data, dict):
        raise JsonTextError("not_object", data)
    return data
