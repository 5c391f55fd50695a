"""The installed models, one a language (``[recognizer.models]``), loaded on first use.

The model the daemon starts with (the default language's) is loaded at start, as with
one model, and stays: it is the memory budget's baseline. Every other model loads
when a session first asks for its language, in a worker thread (the event loop and the
sessions of models already loaded do not wait; sessions asking for the same model
wait for that one load). Each model has its own recogniser pool.

Those other models count against ``recognizer.memory_budget_mb`` together with the
recognisers: before a load, the model's size is guessed from its files
(:data:`RSS_PER_DISK_BYTE` times their size); after it, the process's RSS growth is
what it takes. When a model does not fit, the least recently used loaded model without
live sessions is unloaded first; if it still does not fit, the session is refused
(503, ``model_unavailable``) with a reason. The :class:`~edge.asr.memory.MemoryBudget`
is told: its baseline grows by the loaded models and its budget shrinks by them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from edge.asr.memory import MB, malloc_trim, read_rss
from edge.asr.modeldir import model_path
from edge.core.close_codes import CLOSE_TRY_AGAIN_LATER
from edge.core.errors import RecognizerError, Refusal
from edge.core.model_table import ModelTable

if TYPE_CHECKING:
    from edge.asr.memory import MemoryBudget
    from edge.asr.recognizer import RecognizerFactory
    from edge.asr.vosk import LoadedModel

logger = logging.getLogger(__name__)

#: A Vosk model's RSS per byte of its files: the small Korean model's 252 MB of files
#: take about 495 MB loaded (measured 2026-12-07); a guess until the load measures it.
RSS_PER_DISK_BYTE = 2.0
#: Seconds a refused client is told to wait before it retries.
RETRY_AFTER = 5


def estimate_bytes(source: str) -> int:
    """The memory a model will take, guessed from the size of its files (blocking).
    Raises :class:`RecognizerError` when the model is not there."""
    path = model_path(source)
    if not path.is_dir():
        raise RecognizerError(f"no model directory at {path}")
    files = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return int(files * RSS_PER_DISK_BYTE)


@dataclass(eq=False)
class Slot:
    """One language's model: not loaded (``model`` None), loading, or loaded."""

    language: str
    source: str
    resident: bool = False  # the start model: never unloaded
    model: LoadedModel | None = None
    recognizers: RecognizerFactory | None = None
    bytes: int = 0  # memory it takes (measured), or is guessed to take while loading
    sessions: int = 0
    last_used: float = 0.0
    loads: int = 0
    unloads: int = 0
    loading: bool = False
    error: str | None = None  # why the last load failed
    lock: trio.Lock = field(default_factory=trio.Lock)


class ModelLease:
    """A session's hold on its language's model: unloading waits for :meth:`release`."""

    def __init__(self, registry: ModelRegistry, slot: Slot) -> None:
        self._registry: ModelRegistry | None = registry
        self.language = slot.language
        assert slot.model is not None and slot.recognizers is not None
        self.model: LoadedModel = slot.model
        self.recognizers: RecognizerFactory = slot.recognizers
        self._slot = slot

    def release(self) -> None:
        registry, self._registry = self._registry, None
        if registry is not None:
            registry._release(self._slot)


def unavailable(message: str) -> Refusal:
    return Refusal("model_unavailable", message, status=503,
                   close_code=CLOSE_TRY_AGAIN_LATER, retry_after=RETRY_AFTER)


class ModelRegistry:
    """The models of a :class:`~edge.core.model_table.ModelTable` (see the module).

    ``load`` loads a model directory (blocking: edge.asr.vosk.load_model, plus the
    daemon's term marking and its one speaker model: speaker vectors describe the voice,
    not the language, so every model shares the copy loaded at start, and with it the
    space the voiceprints are in); ``make_pool`` makes a loaded model's recogniser factory;
    ``estimate``, ``read`` and ``clock`` are stand-ins in tests.
    """

    def __init__(self, table: ModelTable, budget_mb: int, *,
                 load: Callable[[Path], LoadedModel],
                 make_pool: Callable[[LoadedModel], RecognizerFactory],
                 memory: MemoryBudget | None = None,
                 estimate: Callable[[str], int] = estimate_bytes,
                 read: Callable[[], int] = read_rss,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.budget = budget_mb * MB
        self._load = load
        self._make_pool = make_pool
        self._estimate = estimate
        self._read = read
        self._clock = clock
        self._load_lock = threading.Lock()  # one load at a time: its RSS growth is its own
        self.memory = memory
        self._memory_base = (memory.baseline, memory.budget) if memory is not None else None
        self.slots = {tag: Slot(tag, source) for tag, source in table.models.items()}
        self._unloaded: list[tuple[Any, Any]] = []  # freed by the next load's thread

    def add_loaded(self, language: str, model: LoadedModel,
                   recognizers: RecognizerFactory) -> None:
        """The start model, loaded by the daemon: resident, outside the budget."""
        slot = self.slots[language]
        slot.model, slot.recognizers, slot.resident = model, recognizers, True
        slot.loads += 1

    @property
    def models_bytes(self) -> int:
        """What the loaded (or loading) models other than the start model take."""
        return sum(s.bytes for s in self.slots.values() if not s.resident)

    def _recognizer_bytes(self) -> int:
        if self.memory is None or self._memory_base is None:
            return 0
        return max(0, self.memory.rss - self.memory.baseline)

    async def acquire(self, language: str) -> ModelLease:
        """The model for ``language`` (a key of the table: the caller chose it), loaded
        if it is not. Raises :class:`Refusal` (503) when it cannot be loaded or fit."""
        slot = self.slots[language]
        async with slot.lock:
            if slot.model is None:
                await self._load_into(slot)
            slot.sessions += 1
            slot.last_used = self._clock()
            return ModelLease(self, slot)

    def _release(self, slot: Slot) -> None:
        slot.sessions -= 1
        slot.last_used = self._clock()

    async def _load_into(self, slot: Slot) -> None:
        try:
            guess = await trio.to_thread.run_sync(self._estimate, slot.source)
        except (RecognizerError, OSError) as exc:
            slot.error = str(exc)
            raise unavailable(f"the model for {slot.language} cannot be loaded: {exc}") \
                from exc
        self._make_room(slot, guess)
        slot.bytes, slot.loading = guess, True  # counted while it loads
        logger.info("loading the model for %s (%s, about %d MB)", slot.language,
                    slot.source, guess // MB)
        try:
            model, grew = await trio.to_thread.run_sync(self._load_measured, slot.source)
            recognizers = self._make_pool(model)
        except (RecognizerError, OSError) as exc:
            slot.bytes, slot.error = 0, str(exc)
            raise unavailable(f"the model for {slot.language} cannot be loaded: {exc}") \
                from exc
        finally:
            slot.loading = False
        slot.model, slot.recognizers, slot.error = model, recognizers, None
        slot.bytes = grew if grew > 0 else guess
        slot.loads += 1
        self._tell_memory()
        logger.info("model for %s loaded (%d MB)", slot.language, slot.bytes // MB)

    def _load_measured(self, source: str) -> tuple[LoadedModel, int]:
        """Load in this (worker) thread; the RSS it added (0: unknown)."""
        with self._load_lock:
            unloaded, self._unloaded = self._unloaded, []
            unloaded.clear()  # the models unloaded to make room are freed here
            malloc_trim()  # and what they left in the heap given back
            before = self._read()
            model = self._load(model_path(source))
            return model, self._read() - before

    def _make_room(self, slot: Slot, needed: int) -> None:
        """Unload idle models, least recently used first, until ``needed`` fits."""
        if needed > self.budget:
            raise unavailable(
                f"the model for {slot.language} needs about {needed // MB} MB, more than "
                f"recognizer.memory_budget_mb ({self.budget // MB} MB)")
        while self.models_bytes + self._recognizer_bytes() + needed > self.budget:
            idle = [s for s in self.slots.values() if s.model is not None and not s.resident
                    and s.sessions == 0 and not s.loading]
            if not idle:
                in_use = ", ".join(s.language for s in self.slots.values()
                                   if s.bytes and not s.resident)
                raise unavailable(
                    f"the model for {slot.language} needs about {needed // MB} MB and "
                    f"recognizer.memory_budget_mb has not that much free: the loaded "
                    f"models ({in_use or 'none'}) have live sessions; retry later")
            self._unload(min(idle, key=lambda s: s.last_used))

    def _unload(self, slot: Slot) -> None:
        logger.info("unloading the model for %s (idle, least recently used; %d MB)",
                    slot.language, slot.bytes // MB)
        # Freeing a model takes about as long as loading it (measured: 0.5 s for the
        # small Korean model): the load that follows drops it in its worker thread.
        self._unloaded.append((slot.model, slot.recognizers))
        slot.model = slot.recognizers = None
        slot.bytes = 0
        slot.unloads += 1
        self._tell_memory()

    def _tell_memory(self) -> None:
        """Move the recognisers' baseline and budget by what the models take."""
        if self.memory is None or self._memory_base is None:
            return
        baseline, budget = self._memory_base
        self.memory.baseline = baseline + self.models_bytes
        self.memory.budget = max(0, budget - self.models_bytes)

    def status(self) -> list[dict[str, Any]]:
        """Every installed model: loaded or not, sessions, memory (for /healthz)."""
        return [{"language": s.language, "model": s.source,
                 "name": s.model.name if s.model is not None else None,
                 "loaded": s.model is not None, "loading": s.loading,
                 "default": s.language == self.table.default, "resident": s.resident,
                 "sessions": s.sessions, "memory_mb": round(s.bytes / MB, 1),
                 "loads": s.loads, "unloads": s.unloads, "error": s.error}
                for s in self.slots.values()]
