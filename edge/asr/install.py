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
import logging
import os
import re
import secrets
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge.asr.archive import (
    ModelInstallError,
    Progress,
    download,
    fetch_sidecar,
    hash_file,
    normalise_sha256,
    progress_bar,
    read_sidecar,
    unpack,
    verify_sha256,
)
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
from edge.core.fs import fsync_dir

__all__ = ["ModelInstallError", "install", "progress_bar"]

logger = logging.getLogger(__name__)

_TMP_PREFIX = ".install-"
_OLD_PREFIX = ".old-"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


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
    expected = normalise_sha256(sha256) if sha256 is not None else None
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
                    expected, origin = fetch_sidecar(url + ".sha256", opener), "the .sha256 file"
                with archive.open("wb") as out:
                    digest, size = download(url, out, root, opener, progress)
            else:
                assert local is not None
                label, archive = str(local), local
                if expected is None:
                    expected, origin = read_sidecar(Path(f"{local}.sha256")), "the .sha256 file"
                digest, size = hash_file(local, progress)
            verify_sha256(label, digest, expected, origin)
            model_root, top = unpack(archive, size, tmp / "unpacked", root, label)
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
