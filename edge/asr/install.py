"""``edge models install``: download or unpack a model, verify it, swap it into place.

Plain blocking code (downloads, hashing, unpacking); no trio, no vosk. An install
downloads into a temporary directory inside the models directory (same filesystem),
verifies the archive, unpacks it next to it (refusing absolute paths, ``..``, links and
zip bombs), checks that the result is a model, and only then renames it into place
under a lock on the models directory. Any failure, Ctrl-C included, leaves the models
directory as it was; an existing model of the same name stays in service until the new
one is complete.

Checksums: a catalogue entry with a known ``sha256`` is verified against it. Entries
without one (alphacephei.com publishes no checksums), URLs and local zips are verified
against ``--sha256`` when given, else against a ``.sha256`` sidecar next to the archive
(``URL.sha256`` or ``FILE.zip.sha256``, in ``sha256sum`` format); with neither, the
model is installed with the warning "no checksum to verify" and its sha256 is logged
so that it can be pinned next time.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import fcntl
import hashlib
import http.client
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TextIO

from edge import __version__
from edge.asr.catalogue import (
    CATALOGUE,
    CatalogEntry,
    Kind,
    asr_problem,
    catalogue_entry,
    detect_kind,
    models_dir,
    models_dir_entries,
    speaker_problem,
)
from edge.asr.modeldir import SPEAKER_MODEL_FILES
from edge.core.errors import ConfigError, EdgeError
from edge.core.fs import fsync_dir

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
_TMP_PREFIX = ".install-"
_OLD_PREFIX = ".old-"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
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


def install(
    source: str,
    state: Path,
    *,
    sha256: str | None = None,
    progress: Progress | None = None,
    opener: Callable[..., Any] = urllib.request.urlopen,
) -> Path:
    """Install a model from a catalogue NAME, an http(s) URL or a local zip; return its path.

    Blocks for the whole download and unpacking (minutes for large models on a Pi).
    ``progress(done, total)`` is called as the archive is read, with increasing byte
    counts from 0; ``total`` is ``None`` while the size is unknown, and once the whole
    archive is read the last call has ``done == total``. ``opener(request, timeout=...)``
    opens URLs (tests and proxies can replace it). An installed model of the same name
    is replaced; a concurrent install in the same state directory is refused. Raises
    :class:`ModelInstallError` (or :class:`ConfigError` for a malformed ``sha256``); on
    any failure, Ctrl-C included, nothing is left behind.
    """
    expected = _normalise_sha256(sha256) if sha256 is not None else None
    origin = "--sha256"
    entry, url, local = _resolve(source)
    if expected is None and entry is not None and entry.sha256:
        expected, origin = entry.sha256.lower(), "the catalogue"

    root = models_dir(state)
    owner = _prepare_models_dir(state, root)
    with _install_lock(root):
        _remove_leftovers(root)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
        try:
            archive = tmp / "archive.zip"
            if url is not None:
                label = source if entry else url
                if expected is None:
                    expected, origin = _fetch_sidecar(url + ".sha256", opener), "the .sha256 file"
                with archive.open("wb") as out:
                    digest, size = _download(url, out, root, opener, progress)
            else:
                assert local is not None
                label, archive = str(local), local
                if expected is None:
                    expected, origin = _read_sidecar(Path(f"{local}.sha256")), "the .sha256 file"
                digest, size = _hash_file(local, progress)
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

            model_root, top = _unpack(archive, size, tmp / "unpacked", root, label)
            name = entry.name if entry else (top or _archive_stem(url, local))
            if not _NAME_RE.fullmatch(name):
                raise ModelInstallError(f"cannot install {label}: {name!r} is not usable as a "
                                        "model directory name; rename the archive")
            kind = _check_model(model_root, entry.kind if entry else None, label)
            if owner is not None:
                _chown_tree(model_root, owner)
            target = root / name
            _swap_in(model_root, target)
        except OSError as exc:
            raise ModelInstallError(_os_message(exc, root)) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("installed %s model %s in %s", kind, name, target)
    return target


def _normalise_sha256(value: str) -> str:
    text = value.strip().lower()
    if not _SHA256_RE.fullmatch(text):
        raise ConfigError("--sha256", f"expected 64 hexadecimal digits, got {value!r}")
    return text


def _resolve(source: str) -> tuple[CatalogEntry | None, str | None, Path | None]:
    entry = catalogue_entry(source)
    if entry is not None:
        return entry, entry.url, None
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return None, source, None
    if len(scheme) > 1 and "://" in source:
        raise ModelInstallError(f"cannot install {source}: only http:// and https:// URLs, "
                                "catalogue names and local .zip files are supported")
    path = Path(source).expanduser()
    if path.is_file():
        return None, None, path.resolve()
    if path.exists():
        raise ModelInstallError(f"cannot install {source}: not a file (a model must be "
                                "installed from its .zip archive)")
    if source.lower().endswith(".zip") or os.sep in source:
        raise ModelInstallError(f"cannot install {source}: file not found")
    hint = difflib.get_close_matches(source, [e.name for e in CATALOGUE], n=1)
    suggestion = f" (did you mean {hint[0]}?)" if hint else ""
    raise ModelInstallError(f"unknown model {source!r}{suggestion}: give a name from "
                            "'edge models list', an http(s) URL or a .zip file")


def _archive_stem(url: str | None, local: Path | None) -> str:
    if local is not None:
        name = local.name
    else:
        assert url is not None
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/")[-1])
    return name[:-4] if name.lower().endswith(".zip") else name


def _prepare_models_dir(state: Path, root: Path) -> tuple[int, int] | None:
    """Create the models directory; return the owner to give new files, if not ours.

    Run as root (``sudo edge models install``), new models are given to the owner of
    the state directory, so that the service keeps owning its models.
    """
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        root.mkdir(exist_ok=True)
        st = state.stat()
    except OSError as exc:
        raise ModelInstallError(_os_message(exc, root)) from exc
    if os.geteuid() != 0 or (st.st_uid, st.st_gid) == (0, 0):
        return None
    owner = (st.st_uid, st.st_gid)
    os.chown(root, *owner)
    return owner


@contextlib.contextmanager
def _install_lock(root: Path) -> Iterator[None]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ModelInstallError(f"another model install is running in {root}; wait for "
                                    "it to finish") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_leftovers(root: Path) -> None:
    # Under the lock, temporary entries can only be left by a killed install.
    for path in models_dir_entries(root):
        if path.name.startswith((_TMP_PREFIX, _OLD_PREFIX)):
            logger.info("removing %s, left by an interrupted install", path)
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


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


def _fetch_sidecar(url: str, opener: Callable[..., Any]) -> str | None:
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


def _read_sidecar(path: Path) -> str | None:
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


def _download(url: str, out: IO[bytes], root: Path, opener: Callable[..., Any],
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


def _hash_file(path: Path, progress: Progress | None) -> tuple[str, int]:
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


def _unpack(archive: Path, archive_size: int, dest: Path, root: Path, label: str
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


def _check_model(path: Path, kind: Kind | None, label: str) -> Kind:
    """Validate the unpacked model before it is moved into place."""
    asr = "a Vosk model needs am/final.mdl and graph/HCLG.fst or graph/HCLr.fst"
    spk = f"a Vosk speaker model needs {', '.join(SPEAKER_MODEL_FILES)}"
    layout = ("the archive must hold one model folder (as alphacephei.com's do) or the "
              "model's files at its top level")
    if kind == "asr" and asr_problem(path) is not None:
        raise ModelInstallError(f"{label} does not hold a Vosk speech model: {asr}; {layout}")
    if kind == "speaker" and speaker_problem(path) is not None:
        raise ModelInstallError(f"{label} does not hold a Vosk speaker model: {spk}; {layout}")
    found = kind or detect_kind(path)
    if found is None:
        raise ModelInstallError(f"{label} does not hold a Vosk model: {asr}, {spk}; {layout}")
    return found


def _chown_tree(path: Path, owner: tuple[int, int]) -> None:
    os.chown(path, *owner)
    for dirpath, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(os.path.join(dirpath, name), *owner, follow_symlinks=False)


def _swap_in(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside, then deleted."""
    aside = None
    if target.exists() or target.is_symlink():
        aside = target.with_name(f"{_OLD_PREFIX}{target.name}-{secrets.token_hex(4)}")
        os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        if aside is not None:
            os.rename(aside, target)
        raise
    fsync_dir(target.parent)
    if aside is not None:
        try:
            _remove(aside)
        except OSError as exc:  # the new model is in place; the old one is only clutter
            logger.warning("could not delete the replaced model %s: %s", aside, exc)


def _os_message(exc: OSError, root: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"not enough space in {root}: free some space and try again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write in {root}: {exc.strerror}; run as the service's user or fix "
                "the directory's permissions")
    where = f" ({exc.filename})" if exc.filename else ""
    return f"cannot install into {root}: {exc.strerror or exc}{where}"
