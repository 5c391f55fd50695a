"""The key set service: fetches the identity provider's JWKS on a schedule and when a
token names a key the device does not know, and keeps a sealed copy on disk.

A background service (run under the daemon's supervisor). Every fetch runs in a worker
thread (:func:`edge.core.jwks.fetch_document`, urllib) bounded by ``timeout``; the
event loop never waits on the network, and a failed fetch leaves the key set in force
as it was. Handshakes call :meth:`JwksRefresher.wait_for` with the ``kid``s their
tokens name: an unknown one asks for a fetch, at most one per ``cooldown`` whatever
the number of such handshakes, and the handshake waits for it no longer than the
fetch's timeout (nor past its own deadline). A flood of made-up ``kid``s therefore
costs at most one fetch per ``cooldown``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import ssl
import time
from collections.abc import Iterable
from pathlib import Path

import trio

from edge import __version__
from edge.core.fs import atomic_write
from edge.core.jwks import PURPOSE, JwksError, KeySet, KeyStore, fetch_document
from edge.crypto.datakey import DataKey
from edge.crypto.sealed import SealedError, open_sealed, seal

logger = logging.getLogger(__name__)

_GRACE = 1.0  # past a fetch's timeout, that a waiting handshake allows it to report


class JwksRefresher:
    """Keeps ``store`` (the key set in force) fresh from ``store.url``.

    ``refresh``: seconds between scheduled fetches; ``cooldown``: the least time
    between fetches asked for by unknown ``kid``s; ``timeout``: the longest a fetch may
    take. ``cache_path`` and ``data_key``: where the last key set is kept, sealed; with
    no data key it is kept in memory only. Start with ``await nursery.start(run)``.
    """

    def __init__(self, store: KeyStore, *, context: ssl.SSLContext | None,
                 refresh: float, cooldown: float, timeout: float,
                 cache_path: Path | None = None, data_key: DataKey | None = None) -> None:
        self.store = store
        self.context = context
        self.refresh = refresh
        self.cooldown = cooldown
        self.timeout = timeout
        self.cache_path = cache_path if data_key is not None else None
        self.data_key = data_key
        self._wanted = trio.Event()
        self._fetched = trio.Event()  # set when the fetch in flight (or the next) ends
        self._fetching = False
        self._last_attempt = -math.inf  # trio.current_time() of the last fetch started
        self._failures = 0
        self._saved_document: object = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Load the sealed copy, fetch, then fetch every ``refresh`` seconds (sooner
        after a failure, with backoff) and whenever :meth:`wait_for` asks, until
        cancelled. Ready once the copy is loaded, or, with no copy, once the first
        fetch has succeeded or failed (at most ``timeout``): the first tokens after a
        boot find their keys."""
        if self.store.current is None:
            await self._load_cache()
        if self.store.current is not None:
            task_status.started()
            await self._fetch()
        else:
            await self._fetch()
            task_status.started()
        while True:
            delay = self.refresh if self._failures == 0 else min(
                self.refresh, self.cooldown * 2 ** min(self._failures - 1, 16))
            with trio.move_on_after(delay):
                await self._wanted.wait()
            self._wanted = trio.Event()
            await self._fetch()

    async def wait_for(self, kids: Iterable[str], deadline: float) -> None:
        """Before verifying a request whose tokens name ``kids``: when one is not in the
        key set in force, have the set fetched (unless one was fetched less than
        ``cooldown`` ago) and wait for that fetch, until it ends, ``timeout`` passes or
        ``deadline`` (trio time) comes. Never raises for a fetch's failure: the token
        is then verified against the set in force, and refused if its key is not in
        it."""
        if all(self.store.knows(kid) for kid in kids):
            return
        now = trio.current_time()
        if not self._fetching:
            if now - self._last_attempt < self.cooldown:
                return
            self._wanted.set()
        fetched = self._fetched
        with trio.move_on_at(min(deadline, now + self.timeout + _GRACE)):
            await fetched.wait()

    async def _load_cache(self) -> None:
        if self.cache_path is None or self.data_key is None:
            return
        try:
            keys = await trio.to_thread.run_sync(
                load_cache, self.cache_path, self.data_key, self.store.url)
        except JwksError as exc:
            logger.warning("auth.jwks: the saved key set is not used: %s", exc)
            return
        if keys is not None:
            self.store.replace(keys, source="disk")
            self._saved_document = keys.document
            logger.info("auth.jwks: %d key(s) from the saved copy of %s (fetched %s)",
                        len(keys.keys), self.store.url, time.strftime(
                            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(keys.fetched_at)))

    async def _fetch(self) -> None:
        self._fetching = True
        self._last_attempt = trio.current_time()
        self.store.last_attempt = time.time()
        try:
            await self._fetch_once()
        finally:
            self._fetching = False
            fetched, self._fetched = self._fetched, trio.Event()
            fetched.set()

    async def _fetch_once(self) -> None:
        store = self.store
        fetch = functools.partial(fetch_document, store.url, context=self.context,
                                  timeout=self.timeout, user_agent=f"edge/{__version__}")
        document: object = None
        timed_out = True
        # fetch_document bounds itself; this also frees the service from a thread that
        # overruns (it is abandoned, and ends at its own deadline).
        with trio.move_on_after(self.timeout):
            try:
                document = await trio.to_thread.run_sync(fetch, abandon_on_cancel=True)
                timed_out = False
            except TimeoutError:
                pass
            except JwksError as exc:
                self._failed("error", str(exc))
                return
        if timed_out:
            self._failed("timeout", f"no answer from {store.url} within "
                         f"{self.timeout:g}s")
            return
        try:
            keys = KeySet.parse(document, fetched_at=time.time())
        except JwksError as exc:
            self._failed("invalid", str(exc))
            return
        before = store.current
        store.replace(keys, source="network")
        store.fetches["ok"] += 1
        self._failures = 0
        if before is None or set(before.keys) != set(keys.keys):
            logger.info("auth.jwks: %d key(s) from %s: %s", len(keys.keys), store.url,
                        ", ".join(sorted(keys.keys)))
        if self.cache_path is not None and keys.document != self._saved_document:
            assert self.data_key is not None  # cache_path is only set with a key
            try:
                await trio.to_thread.run_sync(save_cache, self.cache_path, self.data_key,
                                              store.url, keys)
                self._saved_document = keys.document
            except OSError as exc:
                logger.warning("auth.jwks: cannot save the key set to %s: %s",
                               self.cache_path, exc.strerror)

    def _failed(self, result: str, error: str) -> None:
        if error != self.store.last_error:
            logger.warning("auth.jwks: fetching the key set failed: %s%s", error,
                           "" if self.store.current is None else
                           "; the keys last fetched stay in force")
        self.store.failed(result, error)
        self._failures += 1


def save_cache(path: str | os.PathLike[str], key: DataKey, url: str, keys: KeySet) -> None:
    """Write ``keys`` to ``path``, sealed with the data key (AES-256-GCM, purpose
    ``jwks``): authenticated, so a key slipped into the file does not open. Blocking."""
    blob = json.dumps({"url": url, "fetched_at": keys.fetched_at,
                       "jwks": keys.document}, separators=(",", ":")).encode()
    atomic_write(path, seal(key, PURPOSE, blob))


def load_cache(path: str | os.PathLike[str], key: DataKey, url: str) -> KeySet | None:
    """The key set last saved for ``url`` at ``path``; None when there is none, or it
    was saved for another URL. Blocking. Raises :class:`JwksError` when the file does
    not open with ``key`` (altered, damaged, or sealed under an older data key)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JwksError(f"cannot read {os.fspath(path)}: {exc.strerror}") from None
    try:
        saved = json.loads(open_sealed(key, PURPOSE, data))
    except SealedError as exc:
        raise JwksError(f"{os.fspath(path)} {exc}") from None
    except ValueError:
        raise JwksError(f"{os.fspath(path)} is damaged") from None
    if not isinstance(saved, dict) or saved.get("url") != url:
        return None
    fetched_at = saved.get("fetched_at")
    if (isinstance(fetched_at, bool) or not isinstance(fetched_at, int | float)
            or not math.isfinite(fetched_at)):
        raise JwksError(f"{os.fspath(path)} is damaged")
    return KeySet.parse(saved.get("jwks"), fetched_at=float(fetched_at))
