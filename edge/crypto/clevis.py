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

import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from edge.crypto.clevis_pins import B64URL, MAX_JWE_BYTES, ClevisError, Pins, pins
from edge.crypto.clevis_process import run_clevis, stderr_tail

__all__ = ["MAX_JWE_BYTES", "TPM2_PCR_BANK", "ClevisError", "Pins", "available", "pins",
           "seal", "unseal"]

logger = logging.getLogger(__name__)

_PCRS = re.compile(r"\d{1,2}(,\d{1,2})*")
# The TPM2 PCR bank for a PCR policy. Clevis defaults to sha1, a bank that current TPMs
# and firmware often leave unallocated.
TPM2_PCR_BANK = "sha256"


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
    thumbprints = list(tang_thumbprints) if tang_thumbprints is not None else None
    count = _check_seal_arguments(secret, urls, thumbprints, tpm2, tpm2_pcrs, threshold)
    planned = Pins(tang=tuple(urls), tpm2=tpm2, threshold=threshold if count > 1 else 1,
                   tpm2_pcrs=tpm2_pcrs)
    argv = _encrypt_argv(urls, thumbprints, tpm2, tpm2_pcrs, planned.threshold)
    trust_on_first_use = bool(urls) and thumbprints is None

    what = f"seal with {planned.describe()}"
    code, out, err = run_clevis(argv, bytes(secret), secret=secret, timeout=timeout, env=env,
                                what=what)
    if code != 0:
        hint = ""
        if thumbprints is not None:
            hint = (" (a pinned Tang server that is reachable but has no signing key with "
                    "the given thumbprint fails this way too)")
        raise ClevisError(f"{what}: clevis exited with {code}{hint}"
                          f"{stderr_tail(err, secret)}")
    jwe = bytes(out).strip()
    try:
        made = pins(jwe)
    except ClevisError as exc:
        raise ClevisError(f"{what}: clevis wrote something that is not a JWE ({exc})"
                          ) from None
    if thumbprints is not None:
        _check_pinned_keys(made, urls, thumbprints, what)
    if trust_on_first_use:
        for url, keys in zip(made.tang, made.tang_signing_keys, strict=True):
            logger.info("Tang %s: its signing key was trusted on first use; thumbprint %s "
                        "(give it to pin the server)", url, ", ".join(keys) or "none")
    logger.info("sealed a key with %s", made.describe())
    return jwe


def _check_seal_arguments(secret: bytes, urls: list[str], thumbprints: list[str] | None,
                          tpm2: bool, tpm2_pcrs: str | None, threshold: int) -> int:
    """Raise ClevisError for a bad argument to :func:`seal`; return the number of pins."""
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise ClevisError("seal: the secret must be non-empty bytes")
    for url in urls:
        _check_url(url)
    if len(set(urls)) != len(urls):
        raise ClevisError("seal: a Tang URL is given twice")
    if thumbprints is not None:
        if len(thumbprints) != len(urls):
            raise ClevisError(f"seal: {len(thumbprints)} Tang thumbprints for {len(urls)} "
                              "Tang URLs (one per URL, in the same order)")
        for thp in thumbprints:
            if not thp or not B64URL.fullmatch(thp):
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
    return count


def _encrypt_argv(urls: list[str], thumbprints: list[str] | None, tpm2: bool,
                  tpm2_pcrs: str | None, threshold: int) -> list[str]:
    """``clevis encrypt PIN CONFIG [-y]``: one pin as itself, several under ``sss``."""
    tang_configs: list[dict[str, str]] = []
    for i, url in enumerate(urls):
        config = {"url": url}
        if thumbprints is not None:
            config["thp"] = thumbprints[i]
        tang_configs.append(config)
    tpm2_config: dict[str, str] = {}
    if tpm2_pcrs is not None:
        tpm2_config = {"pcr_bank": TPM2_PCR_BANK, "pcr_ids": tpm2_pcrs}

    pin: str
    config_json: dict[str, Any]
    if len(urls) + (1 if tpm2 else 0) == 1:
        pin, config_json = ("tang", tang_configs[0]) if urls else ("tpm2", tpm2_config)
    else:
        pins_json: dict[str, Any] = {}
        if tang_configs:
            pins_json["tang"] = tang_configs
        if tpm2:
            pins_json["tpm2"] = tpm2_config
        pin, config_json = "sss", {"t": threshold, "pins": pins_json}
    argv = ["clevis", "encrypt", pin, json.dumps(config_json, separators=(",", ":"))]
    if urls and thumbprints is None:
        # Trust on first use, only without thumbprints: with -y, clevis skips the
        # thumbprint check too.
        argv.append("-y")
    return argv


def _check_pinned_keys(made: Pins, urls: list[str], thumbprints: list[str], what: str) -> None:
    """clevis checked the pinned keys already; the JWE must carry them too (an S256
    thumbprint: clevis also accepts the older SHA-1 ones, 27 characters)."""
    carried = dict(zip(made.tang, made.tang_signing_keys, strict=True))
    for url, thp in zip(urls, thumbprints, strict=True):
        if len(thp) == 43 and thp not in carried.get(url, ()):
            raise ClevisError(f"{what}: the JWE for {url} does not carry the pinned "
                              f"signing key {thp}")


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
    code, out, err = run_clevis(["clevis", "decrypt"], jwe, secret=None, timeout=timeout, env=env,
                          what=what)
    if code != 0:
        raise ClevisError(f"{what}: clevis exited with {code}{stderr_tail(err, None)}")
    if not out:
        raise ClevisError(f"{what}: clevis succeeded but returned nothing")
    return bytes(out)


def _check_url(url: object) -> None:
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
        raise ClevisError(f"seal: Tang URL {str(url)[:100]!r} is not an http(s) URL")


