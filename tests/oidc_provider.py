"""A real OpenID provider for tests: ``tests/oidc/provider.mjs`` (the npm package
``oidc-provider``) on 127.0.0.1 over TLS, with a CA and a server certificate made here.

The provider publishes the private JWKs it is given as its key set (their public
halves) and issues client-credentials access tokens as JWTs, signed with the key each
client names, carrying the client's extra claims. Restart it with other keys to
rotate. Everything here blocks; async tests call it through ``trio.to_thread``.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import ssl
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from helpers import terminate
from tools.daemon import free_port

OIDC_DIR = Path(__file__).parent / "oidc"
SCOPE = "transcription:read transcription:write"
RESOURCE = "urn:edge:live-api"
SETUP_HINT = "run .ci/setup (it installs node, npm and tests/oidc's packages)"


def require_node() -> str:
    """The node binary, with oidc-provider installed; fails (never skips) with a hint."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError(f"node is not installed: {SETUP_HINT}")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError(f"tests/oidc/node_modules/oidc-provider is missing: {SETUP_HINT}")
    return node


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 and localhost signed by it: the paths of
    the CA certificate, the server certificate and the server key (PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(_pem(ca))
    paths[1].write_bytes(_pem(cert))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def rsa_jwk(kid: str) -> dict[str, Any]:
    """A new RSA-2048 private JWK for RS256."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


def ec_jwk(kid: str) -> dict[str, Any]:
    """A new P-256 private JWK for ES256."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


class OidcProvider:
    """``node tests/oidc/provider.mjs`` on a free loopback port, TLS from ``directory``'s
    own CA (:attr:`ca_path` is what the device trusts through ``auth.jwks_cafile``)."""

    def __init__(self, directory: Path) -> None:
        self.node = require_node()
        self.directory = directory
        self.ca_path, self.cert_path, self.key_path = make_tls(directory / "tls")
        self.port = free_port()
        self.issuer = f"https://127.0.0.1:{self.port}"
        self.jwks_url = f"{self.issuer}/jwks"
        self.proc: subprocess.Popen[str] | None = None
        self.clients: dict[str, dict[str, Any]] = {}
        self._context = ssl.create_default_context(cafile=str(self.ca_path))

    def start(self, keys: Sequence[Mapping[str, Any]],
              clients: Mapping[str, tuple[str, Mapping[str, Any]]]) -> None:
        """Publish ``keys`` (private JWKs) and serve ``clients``: client id ->
        (the kid that signs its tokens, its extra claims). Blocks until it listens."""
        self.stop()
        self.clients = {cid: {"client_id": cid, "client_secret": f"secret-of-{cid}-0123456789",
                              "sign_kid": kid, "claims": dict(claims)}
                        for cid, (kid, claims) in clients.items()}
        config = {"issuer": self.issuer, "port": self.port, "cert": str(self.cert_path),
                  "key": str(self.key_path), "keys": list(keys), "resource": RESOURCE,
                  "scope": SCOPE, "clients": list(self.clients.values())}
        path = self.directory / "provider.json"
        path.write_text(json.dumps(config))
        log = (self.directory / "provider.log").open("a")
        self.proc = subprocess.Popen([self.node, str(OIDC_DIR / "provider.mjs"), str(path)],
                                     cwd=OIDC_DIR, stdout=subprocess.PIPE, stderr=log,
                                     stdin=subprocess.DEVNULL, text=True)
        log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready ..." or EOF when it failed
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError("the OpenID provider did not start:\n"
                               + (self.directory / "provider.log").read_text()[-3000:])

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

    def token(self, client_id: str) -> str:
        """A client-credentials access token (a JWT) for ``client_id``."""
        client = self.clients[client_id]
        body = urllib.parse.urlencode({
            "grant_type": "client_credentials", "client_id": client_id,
            "client_secret": client["client_secret"], "scope": SCOPE}).encode()
        request = urllib.request.Request(f"{self.issuer}/token", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10, context=self._context) as response:
            answer = json.load(response)
        token: str = answer["access_token"]
        return token

    def jwks(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.jwks_url, timeout=10,
                                    context=self._context) as response:
            data: dict[str, Any] = json.load(response)
        return data
