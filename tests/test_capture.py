"""Room capture: real ALSA -> PortAudio -> PyAudio capture from a file-backed device
(in child processes, see alsa_file_device.py), and fault injection with a fake
PyAudio for what a file cannot do (overflows, failing reads, a wedged driver)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pyaudio
import pytest
import trio
from alsa_file_device import Driver, FileDevice, make_home, run_devices, write_atomically

from edge.audio import capture
from edge.audio.capture import (
    MIC_LOST,
    MIC_OVERRUN,
    MIC_RESTORED,
    Chunk,
    MicEvent,
    MicSource,
    list_input_devices,
    resolve_device,
)
from edge.core.errors import AudioSourceError
from helpers import FIXTURES

RAW = FIXTURES / "speech_ko.raw"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    samples = np.fromfile(RAW, dtype="<i2")
    assert np.count_nonzero(samples) > len(samples) // 4  # real speech, not silence
    return samples


def segment(final: dict[str, Any], index: int) -> np.ndarray:
    return np.fromfile(final["segments"][index], dtype="<i2")


@pytest.fixture
def driver_factory(tmp_path: Path) -> Any:
    drivers: list[Driver] = []

    def start(home: Path, *args: str) -> Driver:
        driver = Driver(home, *args)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.close()


# --- real capture through ALSA ---------------------------------------------------------

def test_devices_are_listed_and_resolved(tmp_path: Path, speech: np.ndarray) -> None:
    stereo = tmp_path / "stereo.raw"
    np.stack([speech, speech], axis=1).tofile(stereo)
    home = make_home(tmp_path / "home", [FileDevice("edgemic", RAW.resolve()),
                                         FileDevice("edgestereo", stereo, channels=2)])
    report = run_devices(home, "edgemic", "EDGEMIC", "stereo", "default", "int:1", "1",
                         "edge", "nosuch")
    devices = {d["name"]: d for d in report["devices"]}
    assert {"edgemic", "edgestereo"} <= set(devices)
    assert devices["edgemic"]["host_api"] == "ALSA"
    assert devices["edgemic"]["max_input_channels"] >= 1
    assert devices["edgemic"]["default_sample_rate"] == 16000.0
    by_index = {d["index"]: d["name"] for d in report["devices"]}

    resolved = report["resolve"]
    assert resolved["edgemic"]["name"] == "edgemic"
    assert resolved["EDGEMIC"]["name"] == "edgemic"  # case-insensitive
    assert resolved["stereo"]["name"] == "edgestereo"  # unique substring
    assert resolved["default"]["index"] == report["default"]  # PortAudio's default input
    assert resolved["int:1"]["name"] == by_index[1]
    assert resolved["1"]["name"] == by_index[1]  # a string of digits is an index
    ambiguous = resolved["edge"]["error"]
    assert "ambiguous" in ambiguous and "edgemic" in ambiguous and "edgestereo" in ambiguous
    unknown = resolved["nosuch"]["error"]
    assert "'nosuch'" in unknown and "'edgemic'" in unknown and "'edgestereo'" in unknown


def test_captured_samples_equal_the_file(tmp_path: Path, speech: np.ndarray,
                                         driver_factory: Any) -> None:
    home = make_home(tmp_path / "home", [FileDevice("edgemic", RAW.resolve())])
    driver = driver_factory(home, "--device", "edgemic", "--infile", str(RAW.resolve()))
    ready = driver.expect(lambda line: "ready" in line)
    assert ready["ready"]["state"] == "running"
    assert ready["infile_open"]
    driver.wait_for_stats(lambda r: r["samples"] >= len(speech) + 16000)
    final = driver.quit()

    got = segment(final, 0)
    assert np.array_equal(got[: len(speech)], speech)  # sample for sample, no offset
    # After the end of the file: silence, not the file again (its speech starts at 0.5 s).
    assert not np.any(got[len(speech): len(speech) + 16000])
    assert final["rates"] == [16000]
    stats = final["final"]
    assert (stats["sample_rate"], stats["channels"]) == (16000, 1)
    assert stats["dropped_chunks"] == 0
    assert stats["state"] == "stopped"
    # Cancelling run() closed the stream before it returned.
    assert not stats["stream_open"]
    assert not final["infile_open"]


def test_stereo_device_is_mixed_down(tmp_path: Path, speech: np.ndarray,
                                     driver_factory: Any) -> None:
    left, right = speech.astype(np.int32), (speech.astype(np.int32) * 3) // 4 - 100
    stereo = tmp_path / "stereo.raw"
    np.stack([left, right], axis=1).astype("<i2").tofile(stereo)
    home = make_home(tmp_path / "home",
                     [FileDevice("edgestereo", stereo, channels=2)])
    driver = driver_factory(home, "--device", "edgestereo", "--channels", "2",
                            "--infile", str(stereo))
    driver.expect(lambda line: "ready" in line)
    driver.wait_for_stats(lambda r: r["samples"] >= len(speech))
    final = driver.quit()

    expected = np.round((left + right) / 2).astype("<i2")
    assert np.array_equal(segment(final, 0)[: len(speech)], expected)
    assert final["final"]["channels"] == 2
    assert final["rates"] == [16000]


def test_missing_device_is_retried_until_it_appears(tmp_path: Path, speech: np.ndarray,
                                                    driver_factory: Any) -> None:
    infile = tmp_path / "late.raw"
    home = make_home(tmp_path / "home", [FileDevice("edgemic", infile)])
    driver = driver_factory(home, "--device", "edgemic", "--infile", str(infile))
    ready = driver.expect(lambda line: "ready" in line)
    assert ready["ready"]["state"] == "lost"  # started anyway: the daemon does not die
    lost = driver.event(MIC_LOST)
    assert "edgemic" in lost["message"]
    retrying = driver.wait_for_stats(lambda r: r["stats"]["failures"] >= 3)
    assert retrying["stats"]["state"] == "lost"
    assert retrying["samples"] == 0

    write_atomically(infile, speech.tobytes())
    restored = driver.event(MIC_RESTORED)
    assert restored["details"]["device"] == "edgemic"
    driver.wait_for_stats(lambda r: r["samples"] >= len(speech))
    final = driver.quit()

    assert np.array_equal(segment(final, restored["segment"])[: len(speech)], speech)
    assert final["final"]["restarts"] == 1
    assert [line["event"] for line in driver.lines if "event" in line] == [
        MIC_LOST, MIC_RESTORED]  # one mic_lost for the whole outage, not one per retry


def test_pause_closes_the_stream_and_resume_reopens_it(
        tmp_path: Path, speech: np.ndarray, driver_factory: Any) -> None:
    infile = str(RAW.resolve())
    home = make_home(tmp_path / "home", [FileDevice("edgemic", RAW.resolve())])
    driver = driver_factory(home, "--device", "edgemic", "--infile", infile)
    driver.expect(lambda line: "ready" in line)
    driver.wait_for_stats(lambda r: r["samples"] >= len(speech))

    paused = driver.command("pause")
    assert not paused["infile_open"]  # ALSA closed the file: the device is closed
    assert not paused["stats"]["stream_open"]
    assert paused["stats"]["state"] == "paused"
    assert paused["stats"]["chunks"] == paused["chunks_at_close"]  # 0.3 s, no capture

    resumed = driver.command("resume")
    assert resumed["infile_open"]
    assert resumed["stats"]["state"] == "running"
    before = resumed["samples"]
    driver.wait_for_stats(lambda r: r["samples"] >= before + len(speech))
    final = driver.quit()

    events = [line for line in driver.lines if "event" in line]
    assert [e["event"] for e in events] == ["mic_paused", "mic_resumed"]
    # Nothing between the pause and the resume; after it, a fresh open (the file again
    # from its start).
    assert len(segment(final, events[0]["segment"])) == 0
    assert np.array_equal(segment(final, events[1]["segment"])[: len(speech)], speech)
    assert final["final"]["restarts"] == 0


def test_device_gone_at_reopen_is_lost_then_restored(
        tmp_path: Path, speech: np.ndarray, driver_factory: Any) -> None:
    infile = tmp_path / "mic.raw"
    infile.write_bytes(speech.tobytes())
    home = make_home(tmp_path / "home", [FileDevice("edgemic", infile)])
    driver = driver_factory(home, "--device", "edgemic", "--infile", str(infile))
    driver.expect(lambda line: "ready" in line)
    driver.wait_for_stats(lambda r: r["samples"] >= len(speech))
    infile.unlink()
    driver.command("pause")
    assert driver.process.stdin is not None
    driver.process.stdin.write("resume\n")  # it cannot reopen: no reply until it does
    driver.process.stdin.flush()
    lost = driver.event(MIC_LOST)
    assert "edgemic" in lost["message"]
    driver.wait_for_stats(lambda r: r["stats"]["failures"] >= 2)

    write_atomically(infile, speech.tobytes())
    restored = driver.event(MIC_RESTORED)
    before = driver.expect(lambda line: line.get("reply") == "resume")["samples"]
    driver.wait_for_stats(lambda r: r["samples"] >= before + len(speech))
    final = driver.quit()
    assert np.array_equal(segment(final, restored["segment"])[: len(speech)], speech)
    assert final["final"]["restarts"] == 1
    assert "edgemic" in final["final"]["last_error"]


# --- fault injection: a fake PyAudio ---------------------------------------------------

class FakeWorld:
    """What a fake PyAudio sees: devices, formats, and a script of read outcomes.

    ``source`` is the interleaved audio reads come from (looped). ``plan`` holds read
    outcomes in order ("ok", "overflow", "error", "block"); when it is empty reads succeed.
    """

    def __init__(self, source: np.ndarray, *, name: str = "fakemic", max_channels: int = 2,
                 default_rate: float = 44100.0,
                 supported: set[tuple[int, int]] | None = None) -> None:
        self.source = source if source.ndim == 2 else source.reshape(-1, 1)
        self.devices = [{"index": 0, "name": name, "maxInputChannels": max_channels,
                         "defaultSampleRate": default_rate, "hostApi": 0}]
        self.supported = supported
        self.plan: deque[str] = deque()
        self.fail_opens = 0
        self.open_attempts: list[float] = []
        self.opened: list[tuple[int, int, int]] = []
        self.reads = 0
        self.closed = 0
        self.position = 0
        self.blocked = threading.Event()
        self.unblock = threading.Event()

    def __call__(self) -> FakePyAudio:
        return FakePyAudio(self)


class FakeStream:
    def __init__(self, world: FakeWorld, channels: int) -> None:
        self.world = world
        self.channels = channels

    def read(self, frames: int, exception_on_overflow: bool = True) -> bytes:
        world = self.world
        time.sleep(0.001)
        outcome = world.plan.popleft() if world.plan else "ok"
        if outcome == "block":
            world.blocked.set()
            world.unblock.wait(30)
        elif outcome == "overflow" and exception_on_overflow:
            raise OSError(pyaudio.paInputOverflowed, "Input overflowed")
        elif outcome == "error":
            raise OSError(pyaudio.paUnanticipatedHostError, "Unanticipated host error")
        world.reads += 1
        idx = (world.position + np.arange(frames)) % len(world.source)
        world.position += frames
        return world.source[idx, : self.channels].astype("<i2").tobytes()

    def close(self) -> None:
        self.world.closed += 1


class FakePyAudio:
    def __init__(self, world: FakeWorld) -> None:
        self.world = world

    def get_device_count(self) -> int:
        return len(self.world.devices)

    def get_device_info_by_index(self, index: int) -> dict[str, Any]:
        return self.world.devices[index]

    def get_host_api_info_by_index(self, index: int) -> dict[str, Any]:
        return {"name": "Fake"}

    def get_default_input_device_info(self) -> dict[str, Any]:
        if not self.world.devices:
            raise OSError(pyaudio.paNoDevice, "No Default Input Device Available")
        return self.world.devices[0]

    def is_format_supported(self, rate: int, input_device: int | None = None,
                            input_channels: int | None = None,
                            input_format: int | None = None) -> bool:
        supported = self.world.supported
        if supported is not None and (rate, input_channels) not in supported:
            raise ValueError("Invalid sample rate", pyaudio.paInvalidSampleRate)
        return True

    def open(self, *, format: int, channels: int, rate: int, input: bool,
             input_device_index: int, frames_per_buffer: int) -> FakeStream:
        world = self.world
        world.open_attempts.append(time.monotonic())
        if world.fail_opens > 0:
            world.fail_opens -= 1
            raise OSError(pyaudio.paDeviceUnavailable, "Device unavailable")
        world.opened.append((rate, channels, frames_per_buffer))
        return FakeStream(world, channels)

    def terminate(self) -> None:
        pass


Items = trio.MemoryReceiveChannel[Chunk | MicEvent]


async def until(condition: Any, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.002)


async def next_chunks(receive: Items, count: int) -> tuple[list[Chunk], list[MicEvent]]:
    chunks: list[Chunk] = []
    events: list[MicEvent] = []
    with trio.fail_after(10):
        while len(chunks) < count:
            item = await receive.receive()
            if isinstance(item, Chunk):
                chunks.append(item)
            else:
                events.append(item)
    return chunks, events


def ramp(frames: int, channels: int = 1) -> np.ndarray:
    """Distinct sample values, so that gaps and repeats show."""
    base = (np.arange(frames) % 20000).astype(np.int32)
    return np.stack([base - 7 * c for c in range(channels)], axis=1)


async def test_falls_back_to_the_device_rate_and_mixes_channels_down(
        nursery: trio.Nursery) -> None:
    source = ramp(50_000, 2)
    world = FakeWorld(source, max_channels=2, default_rate=44100.0,
                      supported={(44100, 2)})
    mic = MicSource("fakemic", chunk_ms=20, backend=world)
    send, receive = trio.open_memory_channel[Chunk | MicEvent](100)
    await nursery.start(mic.run, send)
    chunks, events = await next_chunks(receive, 5)

    assert world.opened[0] == (44100, 2, 882)  # 20 ms at 44.1 kHz
    assert {c.sample_rate for c in chunks} == {44100}  # passed on, not resampled
    got = np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2")
    expected = np.round(source[: len(got)].mean(axis=1)).astype("<i2")
    assert np.array_equal(got, expected)
    stats = mic.statistics()
    assert (stats.state, stats.sample_rate, stats.channels) == ("running", 44100, 2)
    assert events == []


async def test_at_most_a_few_chunks_are_on_their_way_to_the_event_loop() -> None:
    """The capture thread posts chunks without waiting for the loop to take each, but
    no more than ``_IN_FLIGHT``: a loop that takes none (frozen) makes it wait, so the
    memory held on the way stays bounded; once the loop takes them it goes on."""
    mic = MicSource("fakemic", backend=FakeWorld(ramp(16000)))
    posted: list[Any] = []

    class FrozenLoop:
        def run_sync_soon(self, fn: Any, *args: Any) -> None:
            posted.append((fn, args))

    run = capture._Run(0, FrozenLoop())  # type: ignore[arg-type]

    def capture_thread() -> None:
        while mic._post(run, b"\0\0" * 160):
            pass

    with trio.move_on_after(0.5):  # the thread sees the cancellation while it waits
        await trio.to_thread.run_sync(capture_thread)
    assert len(posted) == capture._IN_FLIGHT
    for fn, args in posted[:2]:  # the loop takes two: two more may go
        fn(*args)
    with trio.move_on_after(0.5):
        await trio.to_thread.run_sync(capture_thread)
    assert len(posted) == capture._IN_FLIGHT + 2


async def test_input_overflow_is_reported_once_and_capture_goes_on(
        nursery: trio.Nursery) -> None:
    world = FakeWorld(ramp(16000))
    world.plan.extend(["ok", "overflow", "ok", "overflow", "overflow", "ok"])
    mic = MicSource("fakemic", chunk_ms=10, overrun_interval=60, backend=world)
    send, receive = trio.open_memory_channel[Chunk | MicEvent](1000)
    await nursery.start(mic.run, send)
    chunks, events = await next_chunks(receive, 10)

    assert len(chunks) == 10
    assert [(e.code, e.details["cause"]) for e in events] == [(MIC_OVERRUN, "device")]
    stats = mic.statistics()
    assert stats.overruns == 3
    assert stats.state == "running"
    assert stats.failures == 0
    assert stats.dropped_chunks == 0


async def test_read_failure_is_lost_then_restored_with_backoff(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.audio.capture")
    world = FakeWorld(ramp(16000))
    world.plan.extend(["ok", "ok", "error"])
    mic = MicSource("fakemic", chunk_ms=10, backoff_base=0.05, backoff_max=0.1,
                    backend=world)
    send, receive = trio.open_memory_channel[Chunk | MicEvent](1000)
    await nursery.start(mic.run, send)
    world.fail_opens = 2  # the two reopenings after the failed read fail too
    await until(lambda: mic.statistics().restarts == 1)
    _, events = await next_chunks(receive, 5)

    assert [e.code for e in events] == [MIC_LOST, MIC_RESTORED]
    assert "reading from input device 'fakemic' failed" in events[0].message
    assert "Unanticipated host error" in events[0].message
    stats = mic.statistics()
    assert (stats.state, stats.failures, stats.restarts) == ("running", 3, 1)
    assert "Device unavailable" in (stats.last_error or "")  # the last failure
    # The schedule: base, doubled, capped at backoff_max.
    delays = [float(m) for m in re.findall(r"retrying in ([\d.]+)s", caplog.text)]
    assert delays == [0.05, 0.1, 0.1]
    gaps = np.diff(world.open_attempts)  # first open, then one per retry
    assert len(gaps) == 3
    assert all(gap >= delay * 0.95 for gap, delay in zip(gaps, delays, strict=True))


async def test_a_consumer_that_falls_behind_never_stalls_the_microphone(
        nursery: trio.Nursery) -> None:
    world = FakeWorld(ramp(16000))
    mic = MicSource("fakemic", chunk_ms=10, overrun_interval=60, backend=world)
    send, receive = trio.open_memory_channel[Chunk | MicEvent](2)
    await nursery.start(mic.run, send)
    await until(lambda: world.reads >= 30)  # nobody reads, the device is read all along

    stats = mic.statistics()
    assert stats.chunks == 2
    assert stats.dropped_chunks >= 25
    with trio.fail_after(10):
        items = [await receive.receive() for _ in range(5)]
    kinds = [item.code if isinstance(item, MicEvent) else "chunk" for item in items]
    # The two oldest chunks, then the overrun (once: rate-limited), then live audio.
    assert kinds == ["chunk", "chunk", MIC_OVERRUN, "chunk", "chunk"]
    event = items[2]
    assert isinstance(event, MicEvent)
    assert event.details["cause"] == "consumer"


async def test_pause_while_lost_stops_the_retries(nursery: trio.Nursery) -> None:
    world = FakeWorld(ramp(16000))
    world.fail_opens = 10**6
    mic = MicSource("fakemic", backoff_base=0.01, backoff_max=0.01, backend=world)
    send, receive = trio.open_memory_channel[Chunk | MicEvent](100)
    await nursery.start(mic.run, send)
    assert mic.statistics().state == "lost"
    await until(lambda: len(world.open_attempts) >= 3)

    mic.pause()
    await trio.sleep(0.05)
    attempts = len(world.open_attempts)
    await trio.sleep(0.2)
    assert len(world.open_attempts) == attempts  # paused: the device is left alone
    assert mic.statistics().state == "paused"

    world.fail_opens = 0
    mic.resume()
    _, events = await next_chunks(receive, 3)
    assert [e.code for e in events] == [MIC_LOST, "mic_paused", "mic_resumed"]
    assert mic.statistics().state == "running"


async def test_a_wedged_read_does_not_hold_up_shutdown() -> None:
    world = FakeWorld(ramp(16000))
    world.plan.append("block")
    mic = MicSource("fakemic", close_timeout=0.2, backend=world)
    send, _receive = trio.open_memory_channel[Chunk | MicEvent](100)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(mic.run, send)
            await trio.to_thread.run_sync(world.blocked.wait, 10)
            nursery.cancel_scope.cancel()
    # run() returned although the read is still stuck in the "driver" ...
    assert world.closed == 0
    assert mic.statistics().state == "stopped"
    # ... and the thread closes the stream itself when the read comes back.
    world.unblock.set()
    await until(lambda: world.closed == 1)
    await until(lambda: not mic.statistics().stream_open)


async def test_run_ends_when_the_consumer_goes_away() -> None:
    world = FakeWorld(ramp(16000))
    mic = MicSource("fakemic", chunk_ms=10, backend=world)
    send, receive = trio.open_memory_channel[Chunk | MicEvent](10)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(mic.run, send)
            await receive.receive()
            await receive.aclose()
    assert world.closed == 1
    assert mic.statistics().state == "stopped"


def test_resolve_device_errors_name_the_problem() -> None:
    world = FakeWorld(ramp(10), name="USB PnP Sound Device: Audio (hw:1,0)")
    world.devices.append({"index": 1, "name": "USB Headset (hw:2,0)", "maxInputChannels": 1,
                          "defaultSampleRate": 48000.0, "hostApi": 0})
    world.devices.append({"index": 2, "name": "speakers", "maxInputChannels": 0,
                          "defaultSampleRate": 48000.0, "hostApi": 0})
    assert [d.name for d in list_input_devices(backend=world)] == [
        "USB PnP Sound Device: Audio (hw:1,0)", "USB Headset (hw:2,0)"]
    assert resolve_device("headset", backend=world).index == 1
    assert resolve_device(0, backend=world).max_input_channels == 2
    with pytest.raises(AudioSourceError, match=r"'usb' is ambiguous.*hw:1,0.*hw:2,0"):
        resolve_device("usb", backend=world)
    with pytest.raises(AudioSourceError, match=r"no input device with index 2"):
        resolve_device(2, backend=world)  # an output-only device
    world.devices.clear()
    with pytest.raises(AudioSourceError, match="no input devices are available"):
        resolve_device("default", backend=world)
