"""The sample rates every dialect, WAV header and config key accepts: one range."""

from __future__ import annotations

import pytest

from edge.core.rates import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, is_sample_rate


@pytest.mark.parametrize(("value", "accepted"), [
    (8000, True), (16000, True), (44100, True), (192000, True),
    (7999, False), (192001, False), (0, False), (-16000, False),
    (16000.0, False), ("16000", False), (True, False), (None, False),
])
def test_is_sample_rate(value: object, accepted: bool) -> None:
    assert is_sample_rate(value) is accepted


def test_the_range() -> None:
    assert (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE) == (8000, 192000)
