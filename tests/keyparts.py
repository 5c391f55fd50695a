"""Real key parts for tests, on 127.0.0.1: a Tang server (Debian's tangd behind socat,
as systemd's socket activation would run it) and a software TPM (swtpm), plus a server
that accepts connections and never answers.

Each is a context manager that starts the part, waits until its port accepts, yields it
and kills it on exit; the pytest fixtures ``tang`` and ``swtpm`` wrap them (import
``tang_fixture`` / ``swtpm_fixture`` into a test module, or into conftest). A missing
program fails the test with a hint to run ``.ci/setup``: these tests never skip.
Everything here blocks (subprocesses, short polls of a port).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.daemon import free_port

TANGD = "/usr/libexec/tangd"
TANGD_KEYGEN = "/usr/libexec/tangd-keygen"


def require(*programs: str) -> None:
    """Fail the test (never skip) if a program is missing: names it and says what to run."""
    missing = [p for p in programs
               if not (os.access(p, os.X_OK) if os.sep in p else shutil.which(p))]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run .ci/setup (it installs tang, "
                    "clevis, clevis-tpm2, swtpm, swtpm-tools, tpm2-tools and socat)",
                    pytrace=False)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str,
                  timeout: float = 10.0) -> None:
    """Poll (every 20 ms) until 127.0.0.1:``port`` accepts; fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode} before listening on port "
                        f"{port}: {log.read_text(errors='replace')[-500:]}", pytrace=False)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                    timeout=1.0):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} is not listening on port {port} after {timeout} s",
                        pytrace=False)
        time.sleep(0.02)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to ``proc``'s process group (it was started in a session of its own),
    SIGKILL after 5 s; waits for the leader."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5.0)


class TangServer:
    """tangd with its keys in ``keydir``, served by socat on 127.0.0.1:``port``.

    :meth:`stop` and :meth:`start` keep the port and the keys, so a JWE sealed before a
    stop opens again after the start. ``thumbprint`` is the signing key's (what
    ``tangd-keygen`` names its file after, as ``jose jwk thp`` computes it).
    """

    def __init__(self, keydir: Path, port: int, log: Path) -> None:
        self.keydir = keydir
        self.port = port
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def thumbprint(self) -> str:
        for path in sorted(self.keydir.glob("*.jwk")):
            if "sign" in json.loads(path.read_text()).get("key_ops", []):
                return path.stem
        raise AssertionError(f"no signing key in {self.keydir}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start serving (blocks until the port accepts). Fails the test if it cannot."""
        if self.running:
            return
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                ["socat", f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork",
                 f"EXEC:{TANGD} {self.keydir}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        wait_for_port(self.port, self._proc, self.log, "socat serving tangd")

    def stop(self) -> None:
        """Stop serving: connections to the port are refused until :meth:`start`."""
        _stop(self._proc)
        self._proc = None


@contextlib.contextmanager
def tang_server() -> Iterator[TangServer]:
    """A Tang server with fresh keys on a free loopback port, stopped on exit."""
    require("socat", TANGD, TANGD_KEYGEN, "jose")
    with tempfile.TemporaryDirectory(prefix="edge-tang-") as tmp:
        keydir = Path(tmp) / "db"
        keydir.mkdir()
        made = subprocess.run([TANGD_KEYGEN, str(keydir)], capture_output=True, timeout=30)
        if made.returncode != 0:
            pytest.fail(f"tangd-keygen failed: {made.stderr.decode(errors='replace')}",
                        pytrace=False)
        server = TangServer(keydir, free_port(), Path(tmp) / "tangd.log")
        try:
            server.start()
            yield server
        finally:
            server.stop()


class SoftwareTPM:
    """swtpm serving TPM 2.0 commands on 127.0.0.1:``port`` (control on ``port + 1``).

    ``env`` is what a subprocess needs to use it (tpm2-tools and Clevis's tpm2 pin read
    ``TPM2TOOLS_TCTI``; nothing else is needed): merge it into the subprocess's
    environment, or pass it as ``env=`` to :func:`edge.crypto.clevis.seal`/``unseal``.
    """

    def __init__(self, port: int, state: Path, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.state = state
        self._proc = proc

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"TPM2TOOLS_TCTI": self.tcti}

    def flush_transient(self) -> None:
        """Flush the TPM's transient objects, as the kernel's resource manager
        (``/dev/tpmrm0``) does when a process exits. Here no resource manager stands
        between the tools and swtpm, so what a pin process loaded stays loaded when
        Clevis ends it early (``sss``: the first pin to open the key wins, the others
        are stopped), and swtpm's three transient slots can run out."""
        subprocess.run(["tpm2_flushcontext", "-t"], env={**os.environ, **self.env},
                       check=True, capture_output=True, timeout=30)

    def stop(self) -> None:
        _stop(self._proc)


def _free_port_pair() -> int:
    """A loopback port P with P + 1 free too (the swtpm TCTI uses P + 1 for control)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free loopback ports")


@contextlib.contextmanager
def software_tpm() -> Iterator[SoftwareTPM]:
    """A fresh TPM 2.0 (state in a temporary directory), already started up (TPM2_Startup
    with CLEAR), killed on exit."""
    require("swtpm", "tpm2_createprimary")
    with tempfile.TemporaryDirectory(prefix="edge-swtpm-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        log = Path(tmp) / "swtpm.log"
        port = _free_port_pair()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                 "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                 "--flags", "not-need-init,startup-clear"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        tpm = SoftwareTPM(port, state, proc)
        try:
            wait_for_port(port + 1, proc, log, "swtpm (control)")
            wait_for_port(port, proc, log, "swtpm")
            yield tpm
        finally:
            tpm.stop()


class SilentServer:
    """A loopback port that accepts TCP connections (the kernel's backlog does) and
    never answers: what a Tang server that hangs looks like to its clients."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.port: int = sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def silent_server(port: int = 0) -> Iterator[SilentServer]:
    """Listen on ``port`` (0: a free one) and never accept; closed on exit."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        yield SilentServer(sock)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the live (not zombie) processes whose argv contains ``text``."""
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            status = (entry / "stat").read_text()
        except OSError:
            continue
        if text in cmdline and ") Z " not in status:
            found.append(cmdline.strip())
    return found


@pytest.fixture(name="tang")
def tang_fixture() -> Iterator[TangServer]:
    """A Tang server for one test (see :func:`tang_server`)."""
    with tang_server() as server:
        yield server


@pytest.fixture(name="swtpm")
def swtpm_fixture() -> Iterator[SoftwareTPM]:
    """A software TPM for one test (see :func:`software_tpm`)."""
    with software_tpm() as tpm:
        yield tpm
