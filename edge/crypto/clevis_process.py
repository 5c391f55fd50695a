"""Running ``clevis`` as a subprocess: the secret on stdin, out of time bounded, and
nothing it started left behind.

Blocking (call it from a thread in async code). The process runs in a session of its
own; when it exits, or time runs out, its whole process group is killed: Clevis's
``sss`` pin returns once its threshold is met and leaves other pins' children (a
``curl`` with no timeout of its own) running. A new session also has no controlling
terminal, so Clevis never stops to ask on ``/dev/tty``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping

from edge.crypto.clevis_pins import ClevisError

logger = logging.getLogger(__name__)

_STDERR_CHARS = 300


def stderr_tail(err: bytes, secret: bytes | bytearray | None) -> str:
    """``: <the end of clevis's stderr>``, or nothing: never the secret."""
    text = " ".join(err.decode("utf-8", "replace").split())
    if not text:
        return ""
    if secret is not None:
        forms = [bytes(secret).decode("utf-8", "replace"), bytes(secret).hex(),
                 base64.b64encode(secret).decode(),
                 base64.urlsafe_b64encode(secret).rstrip(b"=").decode()]
        if any(len(form) >= 8 and form in text for form in forms):
            return " (its stderr is withheld: it held the secret)"
    if len(text) > _STDERR_CHARS:
        text = "..." + text[-_STDERR_CHARS:]
    return f": {text}"


def run_clevis(argv: list[str], data: bytes, *, secret: bytes | None, timeout: float,
         env: Mapping[str, str] | None, what: str) -> tuple[int, bytearray, bytes]:
    """Run ``argv`` in a new session with ``data`` on stdin: (exit code, stdout, stderr).
    ``secret`` is kept out of the error's stderr.

    Blocks until the process exits or ``timeout`` passes; either way its whole process
    group is then killed, so nothing it started outlives it.
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=full_env,
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        raise ClevisError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    err = bytearray()
    deadline = time.monotonic() + timeout
    try:
        exited = _pump(proc, data, out, err, deadline)
        # Kill the group while its leader is unreaped (a zombie at most): its id cannot
        # have been reused by then, so this reaches only what clevis started.
        _kill_group(proc.pid)
        _drain(proc, out, err, time.monotonic() + 2.0)
    finally:
        _kill_group(proc.pid)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            logger.warning("%s: clevis (pid %d) did not exit after SIGKILL", what, proc.pid)
    if not exited:
        raise ClevisError(f"{what}: timed out after {timeout:g} s"
                          f"{stderr_tail(bytes(err), secret)}")
    return proc.returncode, out, bytes(err)


def _pump(proc: subprocess.Popen[bytes], data: bytes, out: bytearray, err: bytearray,
          deadline: float) -> bool:
    """Feed stdin and collect stdout/stderr until the leader exits (True) or the deadline
    passes (False). Does not reap the leader."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    pidfd: int | None
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # pragma: no cover - Linux before 5.3
        pidfd = None
    pending = memoryview(data)
    with selectors.DefaultSelector() as selector:
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            selector.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        if pidfd is not None:
            selector.register(pidfd, selectors.EVENT_READ)
        try:
            while True:
                if _has_exited(proc.pid):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = remaining if pidfd is not None else min(remaining, 0.05)
                for key, _ in selector.select(wait):
                    if key.fileobj is proc.stdin:
                        try:
                            sent = os.write(proc.stdin.fileno(), pending[:65536])
                        except BrokenPipeError:
                            sent = len(pending)
                        pending = pending[sent:]
                        if not pending:
                            selector.unregister(proc.stdin)
                            proc.stdin.close()
                    elif key.fd == pidfd:
                        selector.unregister(pidfd)
                    else:
                        _read_into(selector, key)
        finally:
            if pidfd is not None:
                os.close(pidfd)


def _drain(proc: subprocess.Popen[bytes], out: bytearray, err: bytearray,
           deadline: float) -> None:
    """Read what is left on stdout and stderr until both close or the deadline passes."""
    assert proc.stdout is not None and proc.stderr is not None
    with selectors.DefaultSelector() as selector:
        for stream, buffer in ((proc.stdout, out), (proc.stderr, err)):
            if not stream.closed:
                selector.register(stream, selectors.EVENT_READ, buffer)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for key, _ in selector.select(remaining):
                _read_into(selector, key)


def _read_into(selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    chunk = os.read(key.fd, 65536)
    if chunk:
        key.data.extend(chunk)
    else:
        selector.unregister(key.fileobj)


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` (our child) has exited, without reaping it."""
    try:
        status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return status is not None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
