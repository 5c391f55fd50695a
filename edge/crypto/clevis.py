"""Seal and unseal a secret (the journal's data key) with Clevis.

A sealed secret is a compact JWE made by the ``clevis`` CLI: a Tang pin (the secret
opens only where the hospital's Tang server answers, so a stolen device cannot open its
own data), a TPM2 pin (bound to the board's TPM), or Shamir's ``sss`` pin over several
of them with a threshold.

Every function here blocks: :func:`seal` and :func:`unseal` run ``clevis`` as a
subprocess (Tang pins make HTTP requests, TPM2 pins talk to the TPM) and wait up to their
``timeout``; call them from a thread (``trio.to_thread.run_sync``) in async code. No trio
here.

The secret goes to ``clevis`` on stdin and comes back on stdout; it is never in argv, the
environment, a log record or an exception message. ``clevis`` runs in a session of its
own: when it is done, or out of time, the whole process group is killed, because its
``sss`` pin returns as soon as its threshold is met and leaves the other pins' children
(a ``curl`` waiting on a Tang server that does not answer) running, and Clevis's scripts
give ``curl`` no timeout of their own. A new session also has no controlling terminal,
so Clevis never stops to ask on ``/dev/tty`` whether to trust a Tang server.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge.core.errors import EdgeError

logger = logging.getLogger(__name__)

# A JWE edge makes is a few kilobytes (an sss JWE carries its pins' JWEs and the Tang
# servers' advertisements); anything far larger is not one.
MAX_JWE_BYTES = 1 << 20
_STDERR_CHARS = 300
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_PCRS = re.compile(r"\d{1,2}(,\d{1,2})*")
# RFC 7638: the members a JWK thumbprint hashes, by key type.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"),
                       "OKP": ("crv", "kty", "x")}
# The TPM2 PCR bank for a PCR policy. Clevis defaults to sha1, a bank that current TPMs
# and firmware often leave unallocated.
TPM2_PCR_BANK = "sha256"


class ClevisError(EdgeError):
    """Sealing or unsealing failed, or a JWE is not one Clevis made.

    The message names what failed (the pin, the Tang URL) and, when it helps, ends with
    what ``clevis`` wrote on stderr, trimmed. It never holds the secret.
    """


@dataclass(frozen=True)
class Pins:
    """How a JWE is sealed, as its protected header says (read without the network).

    ``tang`` are the Tang servers' URLs, ``tang_signing_keys[i]`` the RFC 7638 SHA-256
    thumbprints of the signing keys ``tang[i]`` advertised when the secret was sealed
    (what to pin it with, see :func:`seal`). ``tpm2_pcrs`` are the PCRs a TPM2 pin's
    policy binds to (``"7"``), None without a PCR policy. ``threshold`` is how many pins
    must open: 1 for a single pin, the ``sss`` pin's ``t`` otherwise.
    """

    tang: tuple[str, ...]
    tpm2: bool
    threshold: int
    tang_signing_keys: tuple[tuple[str, ...], ...] = ()
    tpm2_pcrs: str | None = None

    def describe(self) -> str:
        """``tang http://10.0.0.5:7500``, ``tpm2``, ``1 of: tang http://..., tpm2``."""
        parts = [f"tang {url}" for url in self.tang]
        if self.tpm2:
            parts.append(f"tpm2 (PCR {self.tpm2_pcrs})" if self.tpm2_pcrs else "tpm2")
        if len(parts) == 1:
            return parts[0]
        return f"{self.threshold} of: {', '.join(parts)}"


def available(*, tang: bool = True, tpm2: bool = True) -> str | None:
    """None if ``clevis`` can seal and unseal with the given pins here, else why not.

    Looks for the programs on ``PATH`` (blocking, fast): ``clevis`` and ``jose``; for
    ``tang`` the Tang pin and ``curl``; for ``tpm2`` the TPM2 pin (Debian's clevis-tpm2)
    and tpm2-tools. A board without a TPM asks with ``tpm2=False``. It does not look for
    a TPM (``/dev/tpmrm0`` or ``TPM2TOOLS_TCTI``): :func:`seal` fails saying so.
    """
    # sss (several pins) is in the clevis package with the rest.
    needed = ["clevis", "clevis-decrypt", "clevis-encrypt-sss", "clevis-decrypt-sss", "jose"]
    if tang:
        needed += ["clevis-encrypt-tang", "clevis-decrypt-tang", "curl"]
    if tpm2:
        needed += ["clevis-encrypt-tpm2", "clevis-decrypt-tpm2", "tpm2_createprimary",
                   "tpm2_unseal"]
    missing = [name for name in needed if shutil.which(name) is None]
    if not missing:
        return None
    hint = "install the Debian packages clevis" + (" and clevis-tpm2" if tpm2 else "")
    return f"clevis is not usable: missing {', '.join(missing)} ({hint})"


def seal(
    secret: bytes,
    *,
    tang: Sequence[str] = (),
    tang_thumbprints: Sequence[str] | None = None,
    tpm2: bool = False,
    tpm2_pcrs: str | None = None,
    threshold: int = 1,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> bytes:
    """Seal ``secret`` with Clevis and return the compact JWE (ASCII bytes).

    One pin (one Tang URL, or ``tpm2``) uses that pin; several use ``sss`` with
    ``threshold`` of them needed to unseal.

    Tang: with ``tang_thumbprints`` (one per URL, same order) each server must present a
    signing key with that thumbprint, or sealing fails: a server that is not the
    hospital's cannot get the key bound to it. Without them the servers' keys are
    trusted on first use (``clevis ... -y``); their thumbprints are logged at INFO and
    are in :func:`pins` ``(jwe).tang_signing_keys`` so an operator can check and pin them.

    TPM2: ``tpm2_pcrs`` (``"7"``: the Secure Boot state, what a board with secure boot
    would bind to; or ``"0,7"``) makes the TPM release the secret only while those PCRs
    (sha256 bank) hold the values they hold now; without it any boot of this board's TPM
    opens it. The TPM is ``/dev/tpmrm0`` unless ``env`` (merged over this process's
    environment) sets ``TPM2TOOLS_TCTI``.

    Blocks up to ``timeout`` seconds (Tang requests, TPM commands), then kills
    ``clevis``. Raises :class:`ClevisError` for bad arguments, a missing program, a
    refused or unreachable server, a missing TPM, or the timeout.
    """
    urls = list(tang)
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise ClevisError("seal: the secret must be non-empty bytes")
    for url in urls:
        _check_url(url)
    if len(set(urls)) != len(urls):
        raise ClevisError("seal: a Tang URL is given twice")
    thumbprints = list(tang_thumbprints) if tang_thumbprints is not None else None
    if thumbprints is not None:
        if len(thumbprints) != len(urls):
            raise ClevisError(f"seal: {len(thumbprints)} Tang thumbprints for {len(urls)} "
                              "Tang URLs (one per URL, in the same order)")
        for thp in thumbprints:
            if not thp or not _B64URL.fullmatch(thp):
                raise ClevisError(f"seal: Tang thumbprint {thp!r} is not base64url")
    if tpm2_pcrs is not None:
        if not tpm2:
            raise ClevisError("seal: tpm2_pcrs given without the tpm2 pin")
        if not _PCRS.fullmatch(tpm2_pcrs):
            raise ClevisError(f"seal: tpm2_pcrs {tpm2_pcrs!r} is not a list like '7' or '0,7'")
    count = len(urls) + (1 if tpm2 else 0)
    if count == 0:
        raise ClevisError("seal: no pin given (a Tang URL, tpm2, or both)")
    if isinstance(threshold, bool) or not 1 <= threshold <= count:
        raise ClevisError(f"seal: threshold {threshold!r} is not between 1 and {count}, "
                          "the number of pins")

    tang_configs: list[dict[str, str]] = []
    for i, url in enumerate(urls):
        config = {"url": url}
        if thumbprints is not None:
            config["thp"] = thumbprints[i]
        tang_configs.append(config)
    tpm2_config: dict[str, str] = {}
    if tpm2_pcrs is not None:
        tpm2_config = {"pcr_bank": TPM2_PCR_BANK, "pcr_ids": tpm2_pcrs}

    planned = Pins(tang=tuple(urls), tpm2=tpm2, threshold=threshold if count > 1 else 1,
                   tpm2_pcrs=tpm2_pcrs)
    pin: str
    config_json: dict[str, Any]
    if count == 1 and urls:
        pin, config_json = "tang", tang_configs[0]
    elif count == 1:
        pin, config_json = "tpm2", tpm2_config
    else:
        pins_json: dict[str, Any] = {}
        if tang_configs:
            pins_json["tang"] = tang_configs
        if tpm2:
            pins_json["tpm2"] = tpm2_config
        pin, config_json = "sss", {"t": threshold, "pins": pins_json}
    argv = ["clevis", "encrypt", pin, json.dumps(config_json, separators=(",", ":"))]
    trust_on_first_use = bool(urls) and thumbprints is None
    if trust_on_first_use:
        # Only without thumbprints: with -y, clevis skips the thumbprint check too.
        argv.append("-y")

    what = f"seal with {planned.describe()}"
    code, out, err = _run(argv, bytes(secret), secret=secret, timeout=timeout, env=env,
                          what=what)
    if code != 0:
        hint = ""
        if thumbprints is not None:
            hint = (" (a pinned Tang server that is reachable but has no signing key with "
                    "the given thumbprint fails this way too)")
        raise ClevisError(f"{what}: clevis exited with {code}{hint}"
                          f"{_stderr_tail(err, secret)}")
    jwe = bytes(out).strip()
    try:
        made = pins(jwe)
    except ClevisError as exc:
        raise ClevisError(f"{what}: clevis wrote something that is not a JWE ({exc})"
                          ) from None
    if thumbprints is not None:
        # clevis checked the pinned key already; the JWE must carry it too (an S256
        # thumbprint: clevis also accepts the older SHA-1 ones, 27 characters).
        carried = dict(zip(made.tang, made.tang_signing_keys, strict=True))
        for url, thp in zip(urls, thumbprints, strict=True):
            if len(thp) == 43 and thp not in carried.get(url, ()):
                raise ClevisError(f"{what}: the JWE for {url} does not carry the pinned "
                                  f"signing key {thp}")
    if trust_on_first_use:
        for url, keys in zip(made.tang, made.tang_signing_keys, strict=True):
            logger.info("Tang %s: its signing key was trusted on first use; thumbprint %s "
                        "(give it to pin the server)", url, ", ".join(keys) or "none")
    logger.info("sealed a key with %s", made.describe())
    return jwe


def unseal(jwe: bytes, *, timeout: float = 30.0, env: Mapping[str, str] | None = None
           ) -> bytes:
    """The secret sealed in ``jwe`` (made by :func:`seal` or ``clevis encrypt``).

    Blocks up to ``timeout`` seconds (Tang requests, TPM commands), then kills
    ``clevis``: a Tang server that does not answer fails here instead of hanging boot.
    An ``sss`` JWE returns as soon as its threshold of pins opened. ``env`` is merged
    over this process's environment (``TPM2TOOLS_TCTI`` for a TPM other than
    ``/dev/tpmrm0``). Raises :class:`ClevisError` naming the pins (with their URLs) when
    the JWE is malformed, no server answered, the TPM refused, or time ran out.
    """
    sealed = pins(jwe)
    jwe = bytes(jwe).strip()
    what = f"unseal ({sealed.describe()})"
    code, out, err = _run(["clevis", "decrypt"], jwe, secret=None, timeout=timeout, env=env,
                          what=what)
    if code != 0:
        raise ClevisError(f"{what}: clevis exited with {code}{_stderr_tail(err, None)}")
    if not out:
        raise ClevisError(f"{what}: clevis succeeded but returned nothing")
    return bytes(out)


def pins(jwe: bytes) -> Pins:
    """How ``jwe`` is sealed, from its protected header. Pure: no network, no clevis.

    The header is not trusted: anything that is not the shape Clevis writes (not five
    base64url parts, a header that is not a JSON object, an unknown pin, an ``sss``
    threshold out of range, an ``sss`` inside an ``sss``) raises :class:`ClevisError`.
    """
    return _parse(jwe, nested=False)


def _parse(jwe: bytes | str, *, nested: bool) -> Pins:
    where = "an sss pin's JWE" if nested else "JWE"
    if isinstance(jwe, bytes | bytearray):
        if len(jwe) > MAX_JWE_BYTES:
            raise ClevisError(f"{where}: larger than {MAX_JWE_BYTES} bytes")
        try:
            text = bytes(jwe).decode("ascii").strip()
        except UnicodeDecodeError:
            raise ClevisError(f"{where}: not ASCII, so not a compact JWE") from None
    elif isinstance(jwe, str):
        text = jwe.strip()
    else:
        raise ClevisError(f"{where}: not bytes")
    parts = text.split(".")
    if len(parts) != 5:
        raise ClevisError(f"{where}: not a compact JWE (five base64url parts joined by '.')")
    if not all(_B64URL.fullmatch(part) for part in parts):
        raise ClevisError(f"{where}: a part is not base64url")
    try:
        raw = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError):
        raise ClevisError(f"{where}: the protected header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise ClevisError(f"{where}: the protected header is not a JSON object")
    clevis = header.get("clevis")
    if not isinstance(clevis, dict):
        raise ClevisError(f"{where}: no 'clevis' object in the protected header")
    pin = clevis.get("pin")
    if pin == "tang":
        url, keys = _tang(clevis.get("tang"), where)
        return Pins(tang=(url,), tpm2=False, threshold=1, tang_signing_keys=(keys,))
    if pin == "tpm2":
        config = clevis.get("tpm2")
        if not isinstance(config, dict):
            raise ClevisError(f"{where}: the tpm2 pin has no 'tpm2' object")
        pcrs = config.get("pcr_ids")
        if pcrs is not None and not isinstance(pcrs, str):
            raise ClevisError(f"{where}: the tpm2 pin's pcr_ids is not a string")
        return Pins(tang=(), tpm2=True, threshold=1, tpm2_pcrs=pcrs)
    if pin == "sss":
        if nested:
            raise ClevisError(f"{where}: an sss pin inside an sss pin")
        return _sss(clevis.get("sss"))
    if isinstance(pin, str):
        raise ClevisError(f"{where}: unknown pin {pin[:40]!r}")
    raise ClevisError(f"{where}: 'clevis.pin' is missing or not a string")


def _tang(config: object, where: str) -> tuple[str, tuple[str, ...]]:
    if not isinstance(config, dict):
        raise ClevisError(f"{where}: the tang pin has no 'tang' object")
    url = config.get("url")
    if not isinstance(url, str) or not url:
        raise ClevisError(f"{where}: the tang pin has no URL")
    adv = config.get("adv")
    keys = adv.get("keys") if isinstance(adv, dict) else None
    if not isinstance(keys, list):
        raise ClevisError(f"{where}: the tang pin for {url} has no advertisement")
    signing: list[str] = []
    for jwk in keys:
        if not isinstance(jwk, dict):
            raise ClevisError(f"{where}: a key in {url}'s advertisement is not an object")
        ops = jwk.get("key_ops")
        if isinstance(ops, list) and "verify" in ops:
            signing.append(_thumbprint(jwk, url, where))
    return url, tuple(signing)


def _sss(config: object) -> Pins:
    where = "JWE"
    if not isinstance(config, dict):
        raise ClevisError(f"{where}: the sss pin has no 'sss' object")
    t = config.get("t")
    inner = config.get("jwe")
    if not isinstance(inner, list) or not inner:
        raise ClevisError(f"{where}: the sss pin has no list of JWEs")
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= len(inner):
        raise ClevisError(f"{where}: the sss pin's threshold is not between 1 and "
                          f"{len(inner)}")
    urls: list[str] = []
    keys: list[tuple[str, ...]] = []
    tpm2 = False
    pcrs: str | None = None
    for item in inner:
        if not isinstance(item, str):
            raise ClevisError(f"{where}: an sss pin's JWE is not a string")
        part = _parse(item.encode("ascii", "replace"), nested=True)
        urls += part.tang
        keys += part.tang_signing_keys
        if part.tpm2:
            tpm2 = True
            pcrs = pcrs or part.tpm2_pcrs
    return Pins(tang=tuple(urls), tpm2=tpm2, threshold=t, tang_signing_keys=tuple(keys),
                tpm2_pcrs=pcrs)


def _thumbprint(jwk: dict[str, Any], url: str, where: str) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, as ``jose jwk thp`` prints it."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise ClevisError(f"{where}: a signing key in {url}'s advertisement is malformed")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"),
                           sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_url(url: object) -> None:
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
        raise ClevisError(f"seal: Tang URL {str(url)[:100]!r} is not an http(s) URL")


def _stderr_tail(err: bytes, secret: bytes | bytearray | None) -> str:
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


def _run(argv: list[str], data: bytes, *, secret: bytes | None, timeout: float,
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
                          f"{_stderr_tail(bytes(err), secret)}")
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
