"""The exception hierarchy. Every error the daemon raises on purpose is an EdgeError."""

from __future__ import annotations

from edge.core.close_codes import CLOSE_AUTH, CLOSE_POLICY, CLOSE_UNSUPPORTED_DATA


class EdgeError(Exception):
    """Base class of the errors edge raises on purpose."""


class ConfigError(EdgeError):
    """A configuration key is missing, unknown or has a bad value.

    ``key`` is the dotted name of the offending key (``server.port``) so that the
    message an operator sees always names it.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config: {key}: {message}")
        self.key = key


class Refusal(EdgeError):
    """A request or handshake the server will not serve (no such endpoint, full,
    stopping, bad parameters, a network not trusted...).

    ``status`` is the HTTP status for a refused handshake or request, ``close_code``
    the WebSocket close code for clients that asked for errors in-band, ``code`` the
    machine-readable ``error.code`` sent in the JSON body. ``in_band`` says the client
    asked for its errors in-band (the Live API's ``?errors=in_band``).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        close_code: int = CLOSE_POLICY,
        retry_after: int | None = None,
        scope: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.close_code = close_code
        self.retry_after = retry_after
        self.scope = scope  # the scope that was missing (403)
        self.in_band = False


class AuthError(Refusal):
    """A token was refused: 401 (close 1002) unless told otherwise, 403 for a scope."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 401,
        close_code: int = CLOSE_AUTH,
        retry_after: int | None = None,
        scope: str | None = None,
    ) -> None:
        super().__init__(code, message, status=status, close_code=close_code,
                         retry_after=retry_after, scope=scope)


class ProtocolError(EdgeError):
    """A client broke the session protocol; carries the close code to use."""

    def __init__(self, code: str, message: str, *, close_code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


class AudioFormatError(ProtocolError):
    """Audio the server cannot decode (bad or unsupported WAV header)."""

    def __init__(self, message: str) -> None:
        super().__init__("unsupported_audio", message, close_code=CLOSE_UNSUPPORTED_DATA)


class RecognizerError(EdgeError):
    """The Vosk model could not be loaded or a recognizer failed."""


class AudioSourceError(EdgeError):
    """A capture device failed or disappeared."""
