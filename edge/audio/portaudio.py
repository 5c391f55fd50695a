"""PortAudio's side of room capture, all of it blocking: finding a device, choosing its
format, pacing clockless devices, mixing channels down.

Everything here runs in a worker thread (capture's device session, ``edge devices``,
``edge check``); :mod:`edge.audio.capture` is the trio service around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyaudio

from edge.core.errors import AudioSourceError

MAX_CHANNELS = 8

#: What ``MicSource(backend=...)`` must return: an object with PyAudio's interface.
Backend = Callable[[], Any]


@dataclass(frozen=True)
class DeviceInfo:
    index: int  # PortAudio's device index (changes when devices come and go)
    name: str
    max_input_channels: int
    default_sample_rate: float
    host_api: str  # "ALSA" on Linux


# --- devices ---------------------------------------------------------------------------

def list_input_devices(*, backend: Backend = pyaudio.PyAudio) -> list[DeviceInfo]:
    """Every device PortAudio can capture from. Blocking (initialises PortAudio, which
    probes every ALSA PCM): call it from a worker thread inside the daemon."""
    pa = initialise(backend)
    try:
        return _input_devices(pa)
    finally:
        pa.terminate()


def resolve_device(spec: str | int, *, backend: Backend = pyaudio.PyAudio) -> DeviceInfo:
    """The input device ``spec`` names. Blocking, like :func:`list_input_devices`.

    ``spec`` is an index (an int, or a string of digits that is no device's name), a
    name (exact, then case-insensitively exact, then a case-insensitive substring that
    must match only one device), or ``"default"`` for PortAudio's default input.
    Raises :class:`AudioSourceError` naming ``spec`` and listing the devices.
    """
    pa = initialise(backend)
    try:
        return resolve(pa, spec)
    finally:
        pa.terminate()


def initialise(backend: Backend) -> Any:
    try:
        return backend()
    except OSError as exc:
        raise AudioSourceError(f"PortAudio could not be initialised: {exc}") from exc


def _input_devices(pa: Any) -> list[DeviceInfo]:
    devices = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        if int(info["maxInputChannels"]) <= 0:
            continue
        try:
            host_api = str(pa.get_host_api_info_by_index(info["hostApi"])["name"])
        except (OSError, KeyError):
            host_api = str(info.get("hostApi", "?"))
        devices.append(DeviceInfo(index=index, name=str(info["name"]),
                                  max_input_channels=int(info["maxInputChannels"]),
                                  default_sample_rate=float(info["defaultSampleRate"]),
                                  host_api=host_api))
    return devices


def resolve(pa: Any, spec: str | int) -> DeviceInfo:
    devices = _input_devices(pa)

    def by_index(index: int) -> DeviceInfo:
        for device in devices:
            if device.index == index:
                return device
        raise AudioSourceError(f"no input device with index {index}; "
                               f"{_describe(devices)}")

    if isinstance(spec, int) and not isinstance(spec, bool):
        return by_index(spec)
    text = str(spec).strip()
    if text.lower() == "default":
        try:
            default = pa.get_default_input_device_info()
        except OSError as exc:
            raise AudioSourceError(f"there is no default input device; "
                                   f"{_describe(devices)}") from exc
        return by_index(int(default["index"]))
    for matches in (
        [d for d in devices if d.name == text],
        [d for d in devices if d.name.casefold() == text.casefold()],
    ):
        if matches:
            return matches[0]
    if text.isascii() and text.isdigit():
        return by_index(int(text))
    matches = [d for d in devices if text.casefold() in d.name.casefold()]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(f"{d.index} {d.name!r}" for d in matches)
        raise AudioSourceError(f"input device {text!r} is ambiguous: it matches {names}; "
                               "give the full name or the index")
    raise AudioSourceError(f"no input device matches {text!r}; {_describe(devices)}")


def _describe(devices: list[DeviceInfo]) -> str:
    if not devices:
        return "no input devices are available (PortAudio sees no capture device)"
    return "available: " + ", ".join(f"{d.index} {d.name!r}" for d in devices)


def downmix(pcm: bytes, channels: int) -> bytes:
    """Interleaved s16le frames of ``channels`` channels, averaged to mono."""
    samples = np.frombuffer(pcm, dtype="<i2")
    samples = samples[: len(samples) - len(samples) % channels].reshape(-1, channels)
    return samples.mean(axis=1).round().astype("<i2").tobytes()


# --- the format and the pace -----------------------------------------------------------

def choose_format(pa: Any, device: DeviceInfo, target_rate: int,
              channels_wanted: int | None) -> tuple[int, int]:
    """The (rate, channels) to open ``device`` with: ``target_rate`` mono if the device
    takes it, else its default rate and/or more channels (``channels_wanted`` if
    given). Blocking (asks PortAudio); AudioSourceError if it takes none of them."""
    default_rate = round(device.default_sample_rate)
    if channels_wanted is not None:
        channel_options = [channels_wanted]
    else:
        widest = min(device.max_input_channels, MAX_CHANNELS)
        channel_options = [1, min(2, widest), widest]
    candidates: list[tuple[int, int]] = []
    for channels in channel_options:
        for rate in (target_rate, default_rate):
            if (rate, channels) not in candidates:
                candidates.append((rate, channels))
    for rate, channels in candidates:
        try:
            if pa.is_format_supported(rate, input_device=device.index,
                                      input_channels=channels,
                                      input_format=pyaudio.paInt16):
                return rate, channels
        except ValueError:
            continue
    tried = ", ".join(f"{r} Hz x{c}" for r, c in candidates)
    raise AudioSourceError(f"input device {device.name!r} supports none of the 16-bit "
                           f"formats tried ({tried})")


class RealTimePace:
    """Never hands on audio faster than real time.

    A sound card's read blocks until the samples exist, so this never waits for one.
    Devices without a clock (ALSA ``file``/``null`` plugins, some virtual devices)
    return at once and would flood the recogniser; this holds them to the wall clock.
    When reads fall behind (a stalled driver), the schedule restarts instead of
    letting the device catch up in a burst.
    """

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._start = time.monotonic()
        self._frames = 0

    def wait(self, frames: int) -> None:
        self._frames += frames
        due = self._start + self._frames / self._rate
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        elif now - due > 1.0:
            self._start, self._frames = now, 0
