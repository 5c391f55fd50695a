"""How a Clevis JWE is sealed, read from its protected header (pure: no network, no
``clevis``), and the error every Clevis operation raises.

A compact JWE made by ``clevis encrypt`` names its pin in the protected header: ``tang``
(with the Tang server's URL and advertisement), ``tpm2`` (with its PCR policy, if any)
or ``sss`` (a threshold over the JWEs of other pins). :func:`pins` reads that without
trusting it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from edge.core.errors import EdgeError

# A JWE edge makes is a few kilobytes (an sss JWE carries its pins' JWEs and the Tang
# servers' advertisements); anything far larger is not one.
MAX_JWE_BYTES = 1 << 20
B64URL = re.compile(r"[A-Za-z0-9_-]*")
# RFC 7638: the members a JWK thumbprint hashes, by key type.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"),
                       "OKP": ("crv", "kty", "x")}


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
    if not all(B64URL.fullmatch(part) for part in parts):
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
