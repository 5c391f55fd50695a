"""What a capture source sends and what the room needs of one (pure: no PyAudio).

:class:`~edge.audio.capture.MicSource` (PyAudio, imported only when the microphone is
on) is the real source; tests and benchmarks play files through stand-ins with the
same :class:`Source` shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import trio

MIC_LOST = "mic_lost"
MIC_RESTORED = "mic_restored"
MIC_OVERRUN = "mic_overrun"
MIC_PAUSED = "mic_paused"
MIC_RESUMED = "mic_resumed"


@dataclass(frozen=True)
class Chunk:
    """Mono s16le audio. ``t`` is ``trio.current_time()`` when it reached the event loop
    (just after its last sample was captured)."""

    pcm: bytes
    sample_rate: int
    t: float


@dataclass(frozen=True)
class MicEvent:
    code: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MicStatistics:
    state: str  # "starting", "running", "paused", "lost" or "stopped"
    device: str | None  # the device's name once resolved, else the spec
    sample_rate: int | None  # the rate chunks are sent at (the device's capture rate)
    channels: int | None  # channels captured from the device (chunks are always mono)
    chunks: int  # chunks sent to the consumer
    dropped_chunks: int  # chunks dropped because the consumer's channel was full
    overruns: int  # input overflows reported by PortAudio (audio lost in the device)
    restarts: int  # successful reopenings after a loss
    failures: int  # failed opens and failed reads
    last_error: str | None
    stream_open: bool  # a PortAudio stream is open right now


class Source(Protocol):
    """What the room needs of a capture source (a MicSource; stand-ins in tests)."""

    async def run(self, send_channel: trio.MemorySendChannel[Chunk | MicEvent], *,
                  task_status: trio.TaskStatus[None] = ...) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def statistics(self) -> MicStatistics: ...
