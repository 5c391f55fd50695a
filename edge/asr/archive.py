"""A model archive: downloading it, verifying its sha256, unpacking it safely.

Plain blocking code (network reads, hashing, file writes); no trio, no vosk. Used by
:mod:`edge.asr.install`, which decides where the result goes. Unpacking refuses
absolute paths, ``..``, links and zip bombs, and counts what comes out rather than
what the archive's headers declare.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import stat
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TextIO

from edge import __version__
from edge.core.errors import ConfigError, EdgeError

logger = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]

#: Zip-bomb guards: an archive may not unpack to more than this many times its own
#: size, nor to more than MAX_UNPACKED_BYTES, nor hold more than MAX_ENTRIES entries.
#: Real model archives expand by less than 3x.
MAX_EXPANSION = 10
MAX_UNPACKED_BYTES = 8 << 30
MAX_ENTRIES = 100_000

_CHUNK = 1 << 20
_TIMEOUT = 60.0  # seconds per blocking socket operation, not for the whole download
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_JUNK = ("__MACOSX",)


class ModelInstallError(EdgeError):
    """A model could not be installed; the message says what to do about it."""


def progress_bar(stream: TextIO, *, width: int = 30) -> Progress:
    """A progress callback for :func:`install` that redraws one line with ``\\r``.

    Draws only when ``stream`` is a TTY (logs and pipes get nothing); ends the line
    once ``done`` reaches ``total``.
    """
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        return lambda done, total: None
    last: list[tuple[int, bool]] = []

    def draw(done: int, total: int | None) -> None:
        finished = total is not None and done >= total
        if total:
            step = (1000 * done // total, True)
            fraction = min(done / total, 1.0)
            filled = round(width * fraction)
            line = (f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} "
                    f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")
        else:
            step = (done >> 20, False)
            line = f"{done / 1e6:.1f} MB"
        if last and last[0] == step and not finished:
            return  # nothing visible changed
        last[:] = [step]
        stream.write("\r" + line + ("\n" if finished else ""))
        stream.flush()

    return draw


def normalise_sha256(value: str) -> str:
    text = value.strip().lower()
    if not _SHA256_RE.fullmatch(text):
        raise ConfigError("--sha256", f"expected 64 hexadecimal digits, got {value!r}")
    return text


def verify_sha256(label: str, digest: str, expected: str | None, origin: str) -> None:
    """Raise ModelInstallError unless ``digest`` is the ``expected`` one (from ``origin``);
    with nothing expected, warn and log the digest so that it can be pinned."""
    if expected is None:
        logger.warning("%s: no checksum to verify (its sha256 is %s; pass --sha256 "
                       "to pin it)", label, digest)
    elif digest != expected:
        raise ModelInstallError(
            f"checksum mismatch for {label}: expected sha256 {expected} (from "
            f"{origin}), got {digest}; the download is damaged or not the file "
            "meant: try again, or check where the checksum came from")
    else:
        logger.info("%s: sha256 %s verified against %s", label, digest, origin)


def _request(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"User-Agent": f"edge/{__version__}"})


def _open(url: str, opener: Callable[..., Any]) -> Any:
    try:
        return opener(_request(url), timeout=_TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ModelInstallError(f"cannot download {url}: the server answered HTTP {exc.code} "
                                f"{exc.reason}; check the URL or model name") from exc
    except urllib.error.URLError as exc:
        raise ModelInstallError(f"cannot download {url}: {exc.reason}; check the network, "
                                "DNS and proxy settings of this device") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ModelInstallError(f"cannot download {url}: {exc or type(exc).__name__}; "
                                "check the network") from exc


def fetch_sidecar(url: str, opener: Callable[..., Any]) -> str | None:
    """The sha256 in ``URL.sha256``, or ``None`` when there is no such file."""
    try:
        response = opener(_request(url), timeout=_TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code not in (403, 404, 410):
            logger.info("no checksum file at %s: HTTP %s", url, exc.code)
        return None
    except (OSError, http.client.HTTPException) as exc:
        # The archive's own download reports network trouble in words.
        logger.info("no checksum file at %s: %s", url, exc)
        return None
    with response:
        try:
            text = response.read(4096).decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException):
            return None
    return _parse_sidecar(text, url)


def read_sidecar(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[:4096]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelInstallError(f"cannot read {path}: {exc.strerror}") from exc
    return _parse_sidecar(text, str(path))


def _parse_sidecar(text: str, where: str) -> str:
    # sha256sum format ("HEX  name"), or the bare digest.
    words = text.split()
    digest = words[0].lower() if words else ""
    if not _SHA256_RE.fullmatch(digest):
        raise ModelInstallError(f"{where} does not hold a sha256 checksum; fix or delete it, "
                                "or pass --sha256")
    return digest


def download(url: str, out: IO[bytes], root: Path, opener: Callable[..., Any],
              progress: Progress | None) -> tuple[str, int]:
    """Stream ``url`` into ``out``, hashing as it goes; return (sha256, size)."""
    response = _open(url, opener)
    with response:
        total = _content_length(response)
        if total is not None:
            free = shutil.disk_usage(root).free
            if total > free:
                raise ModelInstallError(
                    f"not enough space in {root}: {url} is {total / 1e6:.0f} MB and only "
                    f"{free / 1e6:.0f} MB are free")
        digest = hashlib.sha256()
        done = 0
        if progress:
            progress(0, total)
        while True:
            try:
                chunk = response.read(_CHUNK)
            except http.client.IncompleteRead as exc:
                raise ModelInstallError(
                    f"download of {url} was cut short after {done + len(exc.partial)} bytes; "
                    "try again (check the network or proxy)") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise ModelInstallError(
                    f"download of {url} broke off after {done} bytes ({exc or type(exc).__name__}"
                    "); try again") from exc
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    if total is not None and done != total:
        raise ModelInstallError(f"download of {url} was cut short: received {done} of {total} "
                                "bytes; try again (check the network or proxy)")
    if progress and total is None:
        progress(done, done)
    return digest.hexdigest(), done


def _content_length(response: Any) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def hash_file(path: Path, progress: Progress | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    try:
        total = path.stat().st_size
        done = 0
        if progress:
            progress(0, total)
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except OSError as exc:
        raise ModelInstallError(f"cannot read {path}: {exc.strerror}") from exc
    return digest.hexdigest(), done


def unpack(archive: Path, archive_size: int, dest: Path, root: Path, label: str
            ) -> tuple[Path, str | None]:
    """Unpack ``archive`` into ``dest``; return the model's root and its top folder name.

    A zip with exactly one top folder (alphacephei's layout) yields that folder; a zip
    with the model's files at its top level yields ``dest`` itself. Entry names are
    checked before anything is written: absolute paths, ``..`` and links are refused.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise ModelInstallError(f"{label} is not a zip archive ({exc}); model archives are "
                                "the .zip files from alphacephei.com") from exc
    with zf:
        members = []
        for info in zf.infolist():
            parts = _member_parts(info, label)
            if parts and parts[0] not in _JUNK and parts[-1] != ".DS_Store":
                members.append((info, parts))
        if not any(not info.is_dir() for info, _ in members):
            raise ModelInstallError(f"{label} is an empty archive")
        if len(members) > MAX_ENTRIES:
            raise ModelInstallError(f"{label} has {len(members)} entries, more than a model "
                                    f"has ({MAX_ENTRIES}); refusing it")
        limit = min(MAX_UNPACKED_BYTES, MAX_EXPANSION * archive_size)
        declared = sum(info.file_size for info, _ in members)
        if declared > limit:
            raise ModelInstallError(_bomb_message(label, declared, archive_size, limit))
        free = shutil.disk_usage(root).free
        if declared > free:
            raise ModelInstallError(f"not enough space in {root}: {label} unpacks to "
                                    f"{declared / 1e6:.0f} MB and only {free / 1e6:.0f} MB "
                                    "are free")
        dest.mkdir()
        written = 0
        try:
            for info, parts in members:
                target = dest.joinpath(*parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                # Count what comes out, not what the header says.
                with zf.open(info) as src, target.open("xb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > limit:
                            raise ModelInstallError(
                                _bomb_message(label, written, archive_size, limit))
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
                RuntimeError) as exc:
            raise ModelInstallError(f"{label} is damaged or uses an unsupported zip feature "
                                    f"({exc}); download it again") from exc
        except FileExistsError as exc:
            raise ModelInstallError(f"{label} is damaged: it holds {exc.filename} twice") \
                from exc
    tops = {parts[0] for _, parts in members}
    if len(tops) == 1 and all(len(parts) > 1 or info.is_dir() for info, parts in members):
        top = tops.pop()
        return dest / top, top
    return dest, None


def _member_parts(info: zipfile.ZipInfo, label: str) -> list[str]:
    name = info.filename
    unsafe = f"{label} is unsafe to unpack: entry {name!r} "
    normal = name.replace("\\", "/")
    if "\x00" in name or normal.startswith("/") or re.match(r"[A-Za-z]:", normal):
        raise ModelInstallError(unsafe + "has an absolute or invalid path; refusing the "
                                "archive")
    parts = [p for p in normal.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ModelInstallError(unsafe + "points outside its folder ('..'); refusing "
                                "the archive")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ModelInstallError(unsafe + "is a symbolic link; refusing the archive")
    return parts


def _bomb_message(label: str, size: int, archive_size: int, limit: int) -> str:
    return (f"{label} unpacks to more than {limit / 1e6:.0f} MB ({size / 1e6:.0f} MB from a "
            f"{archive_size / 1e6:.1f} MB archive); refusing a possible zip bomb")
