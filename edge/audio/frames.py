"""Audio frames: WAV header parsing, PCM framing and downmix, level monitoring.

Pure: takes bytes, returns bytes and events; no trio, no vosk, no devices. All audio
leaves this module as mono signed 16-bit little-endian PCM at the stream's own rate
(Vosk resamples to the model's rate itself).
"""

from __future__ import annotations

import math
import struct
import threading
from dataclasses import dataclass

import numpy as np

from edge.core.errors import AudioFormatError
from edge.core.rates import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, is_sample_rate

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_STREAMING_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)  # "unknown length" markers of live WAV writers


@dataclass(frozen=True)
class AudioFormat:
    sample_rate: int
    channels: int = 1

    @property
    def bytes_per_frame(self) -> int:
        return 2 * self.channels

    def duration_ms(self, nbytes: int) -> float:
        return 1000.0 * nbytes / (self.bytes_per_frame * self.sample_rate)


@dataclass(frozen=True)
class WavHeader:
    format: AudioFormat
    data_offset: int
    data_size: int | None  # None when the writer did not know the length (streaming)


def is_wav(frame: bytes) -> bool:
    return frame[:4] == b"RIFF" and frame[8:12] == b"WAVE"


def parse_wav_header(data: bytes) -> WavHeader:
    """Parse a RIFF/WAVE header at the start of ``data``.

    Accepts 16-bit integer PCM (plain or WAVE_FORMAT_EXTENSIBLE), any rate, 1-8
    channels. The whole header up to the start of the ``data`` chunk must be in
    ``data``. Raises :class:`AudioFormatError` saying what is wrong.
    """
    if not is_wav(data):
        raise AudioFormatError("not a RIFF/WAVE header")
    pos = 12
    fmt: AudioFormat | None = None
    while True:
        if pos + 8 > len(data):
            raise AudioFormatError("WAV header incomplete: the first frame must hold the "
                                   "whole header up to the data chunk")
        chunk_id = data[pos:pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise AudioFormatError("WAV fmt chunk is truncated")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _WAVE_FORMAT_EXTENSIBLE and size >= 40 and body + 26 <= len(data):
                (tag,) = struct.unpack_from("<H", data, body + 24)  # the sub-format GUID
            if tag != _WAVE_FORMAT_PCM:
                raise AudioFormatError(f"WAV encoding {tag:#x} is not supported; send "
                                       "16-bit PCM")
            if bits != 16:
                raise AudioFormatError(f"WAV with {bits}-bit samples is not supported; "
                                       "send 16-bit PCM")
            if not 1 <= channels <= 8:
                raise AudioFormatError(f"WAV with {channels} channels is not supported")
            if not is_sample_rate(rate):
                raise AudioFormatError(f"WAV sample rate {rate} Hz is not supported "
                                       f"({MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE})")
            fmt = AudioFormat(sample_rate=rate, channels=channels)
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioFormatError("WAV data chunk before its fmt chunk")
            data_size = None if size in _STREAMING_SIZES else size
            return WavHeader(format=fmt, data_offset=body, data_size=data_size)
        pos = body + size + (size & 1)


@dataclass(frozen=True)
class FormatNotice:
    """Something the client should hear about the audio it sends (becomes a warning)."""

    code: str
    message: str


class PcmDecoder:
    """Turns a session's binary frames into mono s16le PCM.

    The first frame decides the format: a WAV header (parsed and validated) or raw
    s16le mono at ``default_rate``. A later frame that starts with a WAV header is
    taken as a new header (some clients send every chunk as a small WAV file); its
    format must match. Bytes that do not make a whole sample frame are carried over
    to the next call, so chunk boundaries need not align with samples.
    """

    def __init__(self, default_rate: int, declared_rate: int | None = None) -> None:
        self._default_rate = declared_rate or default_rate
        self._declared_rate = declared_rate
        self.format: AudioFormat | None = None
        self._carry = b""
        self._data_left: int | None = None  # bytes of the current WAV data chunk still due

    def feed(self, frame: bytes) -> tuple[bytes, list[FormatNotice]]:
        notices: list[FormatNotice] = []
        if is_wav(frame):
            header = parse_wav_header(frame)
            if self.format is None:
                self.format = header.format
                notices.extend(self._first_format_notices(header.format))
            elif header.format != self.format:
                raise AudioFormatError("a WAV header in the middle of the stream changed "
                                       "the audio format")
            frame = frame[header.data_offset:]
            self._carry = b""
            self._data_left = header.data_size
        elif self.format is None:
            self.format = AudioFormat(sample_rate=self._default_rate)
        if self._data_left is not None:
            # Chunks after the data chunk (LIST, id3, ...) are metadata, not audio.
            frame, self._data_left = frame[:self._data_left], max(
                0, self._data_left - len(frame))
        data = self._carry + frame
        usable = len(data) - len(data) % self.format.bytes_per_frame
        self._carry = data[usable:]
        data = data[:usable]
        if self.format.channels > 1 and data:
            samples = np.frombuffer(data, dtype="<i2").reshape(-1, self.format.channels)
            data = samples.mean(axis=1).round().astype("<i2").tobytes()
        return data, notices

    def _first_format_notices(self, fmt: AudioFormat) -> list[FormatNotice]:
        notices = []
        if self._declared_rate is not None and self._declared_rate != fmt.sample_rate:
            notices.append(FormatNotice(
                "sample_rate_mismatch",
                f"the URL says sample_rate={self._declared_rate} but the WAV header says "
                f"{fmt.sample_rate} Hz; using the header's rate",
            ))
        if fmt.channels > 1:
            notices.append(FormatNotice(
                "audio_format",
                f"{fmt.channels}-channel audio is mixed down to mono; send mono to save "
                "bandwidth",
            ))
        return notices


#: Chunks up to this size (bytes) keep their frames' energies for a second asker.
_KEEP_BYTES = 65536
_KEPT_CHUNKS = 32
_kept: dict[int, tuple[bytes, int, list[float]]] = {}
_kept_lock = threading.Lock()


def frame_energies(pcm: bytes, per_frame: int) -> list[float]:
    """The energies (sums of squared samples) of the whole frames of ``per_frame``
    samples at the start of mono s16le ``pcm`` (a shorter rest is left out).

    The level meter and the pause detector of a stream both ask for a chunk's: the last
    chunks' (small ones) are kept, by the chunk object itself (held, so never mistaken
    for another), so that a chunk is read once. Any thread; the list is shared, not to
    be changed.
    """
    key = id(pcm)
    kept = _kept.get(key)
    if kept is not None and kept[0] is pcm and kept[1] == per_frame:
        return kept[2]
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    whole = samples.size // per_frame * per_frame
    frames = samples[:whole].reshape(-1, per_frame)
    energies: list[float] = np.einsum("ij,ij->i", frames, frames).tolist()
    if len(pcm) <= _KEEP_BYTES and type(pcm) is bytes:
        with _kept_lock:
            _kept[key] = (pcm, per_frame, energies)
            if len(_kept) > _KEPT_CHUNKS:
                del _kept[next(iter(_kept))]
    return energies


CLIP_LEVEL = 32000  # about -0.2 dBFS: an analogue front end that hits this is saturating


@dataclass
class LevelMeter:
    """Watches levels for clipping and long silence; pure arithmetic on samples.

    ``feed`` returns the warning codes that became due: ``clipping`` when more than
    ``clipping_ratio`` of a frame's samples are at full scale (at most once per
    ``warning_interval`` seconds of audio), ``silence`` once per stretch of
    ``silence_seconds`` below ``silence_dbfs``.
    """

    silence_seconds: float
    silence_dbfs: float
    clipping_ratio: float
    warning_interval: float
    _silent_for: float = 0.0
    _silence_reported: bool = False
    _clock: float = 0.0
    _last_clip_warning: float = -math.inf

    def feed(self, pcm: bytes, sample_rate: int) -> list[str]:
        if not pcm:
            return []
        n = len(pcm) // 2
        seconds = n / sample_rate
        self._clock += seconds
        per_frame = max(1, sample_rate // 100)
        energy = sum(frame_energies(pcm, per_frame))  # the level (the pause detector's too)
        if rest := n % per_frame:
            tail = np.frombuffer(pcm, dtype="<i2")[n - rest:n].astype(np.float32)
            energy += float(np.dot(tail, tail))
        due = []
        # More than ``clipping_ratio`` of the samples at the clip level hold at least that
        # share of n * CLIP_LEVEL**2 of the energy: below it (room tone, most speech) the
        # samples are not looked at one by one (0.99: the dot's float32 rounding).
        if (energy >= 0.99 * CLIP_LEVEL ** 2 * max(1.0, self.clipping_ratio * n)
                and self._clock - self._last_clip_warning >= self.warning_interval):
            samples = np.frombuffer(pcm, dtype="<i2")[:n]
            clipped = np.count_nonzero((samples >= CLIP_LEVEL) | (samples <= -CLIP_LEVEL)
                                       ) / n
            if clipped > self.clipping_ratio:
                self._last_clip_warning = self._clock
                due.append("clipping")
        if energy < n * 32768.0 ** 2 * 10 ** (self.silence_dbfs / 10):
            self._silent_for += seconds
            if self._silent_for >= self.silence_seconds and not self._silence_reported:
                self._silence_reported = True
                due.append("silence")
        else:
            self._silent_for = 0.0
            self._silence_reported = False
        return due

    @property
    def silent_for(self) -> float:
        return self._silent_for


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level relative to full scale; digital silence is ``-inf``."""
    if samples.size == 0:
        return -math.inf
    as_float = samples.astype(np.float32)  # one BLAS dot product: cheap per chunk
    rms = math.sqrt(float(np.dot(as_float, as_float)) / samples.size)
    return -math.inf if rms == 0 else 20 * math.log10(rms / 32768.0)
