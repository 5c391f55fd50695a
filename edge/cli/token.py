"""``edge token``: print a signed JWT (for operators and tests).

The HS256 key comes from :func:`edge.core.keys.signing_key`, as the daemon verifies it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jwt

from edge.cli.common import EXIT_OK, load
from edge.core.auth import mint
from edge.core.errors import ConfigError
from edge.core.keys import signing_key


def run(args: argparse.Namespace) -> int:
    """Blocking (reads key files). Errors in the arguments or keys are ConfigError."""
    config = load(args)
    extra: dict[str, Any] = {}
    for item in args.claim:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError("--claim", f"expected K=V, got {item!r}")
        try:
            extra[key] = json.loads(raw)
        except json.JSONDecodeError:
            extra[key] = raw
    if args.private_key:
        try:
            algorithm, key_text = "RS256", Path(args.private_key).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("--private-key", f"cannot read {args.private_key}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    else:
        algorithm, key_text = "HS256", signing_key(config, dev=args.dev)
    if args.ttl <= 0:
        raise ConfigError("--ttl", "must be greater than 0")
    try:
        token = mint(algorithm=algorithm, key=key_text, sub=args.sub, scope=args.scope,
                     user_type=args.user_type, ttl=args.ttl, now=time.time(),
                     issuer=config.auth.issuer or None,
                     audience=config.auth.audience or None, extra=extra)
    except (jwt.PyJWTError, ValueError) as exc:
        if args.private_key:
            raise ConfigError("--private-key", f"{args.private_key} is not a PEM RSA private "
                              "key") from exc
        raise ConfigError("auth.secret", f"cannot sign with this secret: {exc}") from exc
    print(token)
    return EXIT_OK
