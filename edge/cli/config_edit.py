"""Point the config file at an installed model (``edge models install --set-config``).

A careful rewrite of one line of the operator's TOML file, not a TOML writer: comments,
layout and line ends are kept, and the result is checked to parse to the old settings
plus the one changed key before it replaces the file (durably, through
:func:`edge.core.fs.atomic_write`). Blocking.
"""

from __future__ import annotations

import re
import stat
import tomllib
from pathlib import Path

from edge.asr.catalogue import CONFIG_KEYS
from edge.core.errors import ConfigError
from edge.core.fs import atomic_write

_HEADER_RE = re.compile(r"\s*\[")
_SECTION_RE = re.compile(r"\s*\[\s*recognizer\s*\]\s*(#.*)?")
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
    path = Path(config_path).resolve()
    try:
        text = path.read_bytes().decode("utf-8")  # not read_text: keep CRLF line ends
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError("--config", f"file not found: {config_path}") from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {config_path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("--config", f"{config_path} is not UTF-8 text: {exc}") from exc
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{config_path} is not valid TOML: {exc}") from exc

    new_text = _with_key(text, name, _toml_string(value))
    try:
        after = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        after = None
    expected = {**before, section: {**before.get(section, {}), name: value}}
    if after != expected:
        raise ConfigError(key, f"could not rewrite {config_path} safely (unusual layout); "
                               f"set {name} = {_toml_string(value)} under [{section}] by hand")
    try:
        atomic_write(path, new_text.encode("utf-8"), mode=stat.S_IMODE(st.st_mode),
                     owner=(st.st_uid, st.st_gid))
    except OSError as exc:
        raise ConfigError("--config", f"cannot write {path}: {exc.strerror}") from exc


def _with_key(text: str, name: str, literal: str) -> str:
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    key_re = re.compile(rf"""(\s*(?:{name}|"{name}"|'{name}')\s*=\s*)(.*?)(\r?\n)?""")
    start = next((i for i, line in enumerate(lines) if _SECTION_RE.fullmatch(line.rstrip())),
                 None)
    if start is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += newline
        sep = newline if lines and lines[-1].strip() else ""
        return "".join(lines) + f"{sep}[recognizer]{newline}{name} = {literal}{newline}"
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
