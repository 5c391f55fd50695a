"""Phrases: one reader of phrase files, one set of limits for a client's grammar."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.core.errors import ConfigError
from edge.core.phrases import MAX_PHRASE_CHARS, read_phrases_file
from edge.protocols import live, text, vosk_server
from edge.protocols.text import Limits, phrase_list

KEY = "wyoming.phrases_file"


@pytest.mark.parametrize(("content", "phrases"), [
    ("turn on the light\nturn off the light\n", ("turn on the light", "turn off the light")),
    ("# a comment\n\n  spaced out  \n   # an indented comment\n", ("spaced out",)),
    ("one\r\ntwo", ("one", "two")),
    ("x" * MAX_PHRASE_CHARS, ("x" * MAX_PHRASE_CHARS,)),
])
def test_read(tmp_path: Path, content: str, phrases: tuple[str, ...]) -> None:
    path = tmp_path / "phrases.txt"
    path.write_text(content, encoding="utf-8")
    assert read_phrases_file(KEY, str(path), max_phrases=10) == phrases


@pytest.mark.parametrize(("content", "words"), [
    ("", "has no phrase"),
    ("# only a comment\n\n", "has no phrase"),
    ("ok\n" + "secret words " * 20 + "\n", "line 2 of"),
    ("a\nb\nc\n", "more than 2 phrases (recognizer.max_phrases)"),
])
def test_refused(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "phrases.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_phrases_file(KEY, str(path), max_phrases=2)
    assert info.value.key == KEY
    assert words in str(info.value)
    assert "secret" not in str(info.value)  # the text is never quoted


def test_unreadable_and_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*: No such file or directory"):
        read_phrases_file(KEY, str(tmp_path / "absent.txt"), max_phrases=2)
    path = tmp_path / "latin1.txt"
    path.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_phrases_file(KEY, str(path), max_phrases=2)


def test_one_limits_for_every_dialect() -> None:
    assert live.Limits is vosk_server.Limits is text.Limits
    assert Limits().max_phrase_chars == MAX_PHRASE_CHARS


@pytest.mark.parametrize(("value", "result"), [
    (["a", " b ", "", "  "], ("a", "b")),
    ([], ()),
    (["x" * 10], ("x" * 10,)),
])
def test_phrase_list(value: object, result: tuple[str, ...]) -> None:
    assert phrase_list(value, Limits(max_phrases=4, max_phrase_chars=10), "f", ValueError
                       ) == result


@pytest.mark.parametrize(("value", "message"), [
    ("a", "f must be a list of strings"),
    (["a", 1], "f must be a list of strings"),
    (["a"] * 5, "f has more than 4 entries"),
    (["x" * 11], "a phrase is longer than 10 characters"),
])
def test_phrase_list_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        phrase_list(value, Limits(max_phrases=4, max_phrase_chars=10), "f", ValueError)
    assert str(info.value) == message
