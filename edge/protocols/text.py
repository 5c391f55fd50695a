"""JSON text frames from peers, read once and safely (pure).

Every dialect reads its control messages the same way: a bound on the length first,
then ``json.loads`` (whose ``ValueError`` also covers integers past Python's 4,300-digit
limit, and whose ``RecursionError`` covers absurd nesting), then a check that the value
is an object. What a failure means to the client is each protocol's own business, so
the reason comes back as a value the caller maps to its own error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from edge.core.phrases import MAX_PHRASE_CHARS


@dataclass(frozen=True)
class Limits:
    """What a client's text frames may hold: the frame's length, and the phrases of a
    grammar (how many, and how long each)."""

    max_phrases: int = 1000
    max_phrase_chars: int = MAX_PHRASE_CHARS
    max_text_chars: int = 65536


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


def phrase_list(value: Any, limits: Limits, name: str,
                fail: Callable[[str], Exception]) -> tuple[str, ...]:
    """A grammar from a client's message (``name`` is its field): a list of strings, at
    most ``limits.max_phrases``, none longer than ``limits.max_phrase_chars`` once
    stripped; blank ones dropped (the result may be empty). Raises ``fail(message)``."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise fail(f"{name} must be a list of strings")
    if len(value) > limits.max_phrases:
        raise fail(f"{name} has more than {limits.max_phrases} entries")
    phrases = tuple(p.strip() for p in value if p.strip())
    if any(len(p) > limits.max_phrase_chars for p in phrases):
        raise fail(f"a phrase is longer than {limits.max_phrase_chars} characters")
    return phrases
