"""Phrase files: a grammar an operator gives a peer protocol whose clients cannot send
one (``scriptix.phrases_file``, ``wyoming.phrases_file``).

One phrase a line, UTF-8; blank lines and ``#`` comments are skipped. Blocking (one
small file, read once at start). Errors name the config key, the file and the line,
never the text.
"""

from __future__ import annotations

from pathlib import Path

from edge.core.errors import ConfigError

#: The longest phrase, in a file or in a client's config message.
MAX_PHRASE_CHARS = 200


def read_phrases_file(key: str, path: str, max_phrases: int) -> tuple[str, ...]:
    """The phrases in ``path``; :class:`ConfigError` naming ``key`` when the file cannot
    be read, is not UTF-8, holds no phrase, more than ``max_phrases``
    (``recognizer.max_phrases``) or a line over :data:`MAX_PHRASE_CHARS`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path} is not UTF-8 text") from None
    phrases: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        phrase = line.strip()
        if not phrase or phrase.startswith("#"):
            continue
        if len(phrase) > MAX_PHRASE_CHARS:
            raise ConfigError(key, f"line {number} of {path} is longer than "
                              f"{MAX_PHRASE_CHARS} characters")
        phrases.append(phrase)
    if not phrases:
        raise ConfigError(key, f"{path} has no phrase")
    if len(phrases) > max_phrases:
        raise ConfigError(key, f"{path} has more than {max_phrases} phrases "
                          "(recognizer.max_phrases)")
    return tuple(phrases)
