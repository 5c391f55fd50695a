"""A file-backed ALSA capture device for tests, and a driver that captures from it.

:func:`make_home` writes ``.asoundrc`` into a directory that is then used as ``HOME``:
each :class:`FileDevice` becomes an ALSA PCM ``type plug`` over ``type file`` (reading
``infile``) over ``null``, with a ``hint`` so that PortAudio lists it as an input
device under its PCM name. Capture then goes through the real ALSA -> PortAudio ->
PyAudio path.

PortAudio reads the ALSA configuration when it initialises, and the test process may
have initialised it already, so capture runs in a child process:
``python tests/alsa_file_device.py capture ...`` (see :func:`main`), driven over its
stdin/stdout with JSON lines by :class:`Driver`.

What the file plugin does (alsa-lib 1.2.8, PortAudio V19.6; the tests check all but
the last point, which was checked by hand):

* reads are not paced: ``null`` has no clock, so the file comes out as fast as it is
  read (hundreds of thousands of 100 ms reads per second); after the end of the file
  capture goes on with silence (zeros). It does not loop.
* the samples come through unchanged (same sample values, no offset) when the
  ``plug``'s slave has the file's rate, channels and format;
* ``infile`` is opened when the stream is opened and closed when it is closed (the
  test reads ``/proc/self/fd`` to see it). A missing ``infile`` makes the capture
  open fail, and PortAudio then lists the PCM with 0 input channels; a file removed
  while the stream is open goes on being read (Linux keeps the open file).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class FileDevice:
    """An input device that plays ``infile`` (raw s16le, ``channels`` interleaved)."""

    name: str
    infile: Path
    channels: int = 1
    rate: int = 16000
    description: str = "edge test mic"


def asoundrc_text(devices: Iterable[FileDevice]) -> str:
    blocks = []
    for d in devices:
        blocks.append(f"""\
pcm.{d.name} {{
    type plug
    slave {{
        pcm {{
            type file
            slave.pcm "null"
            file "/dev/null"
            infile "{d.infile}"
            format "raw"
        }}
        format S16_LE
        rate {d.rate}
        channels {d.channels}
    }}
    hint {{
        show on
        description "{d.description}"
    }}
}}
""")
    return "\n".join(blocks)


def make_home(directory: Path, devices: Iterable[FileDevice]) -> Path:
    """Write ``directory/.asoundrc`` for ``devices``; returns ``directory`` (a HOME)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".asoundrc").write_text(asoundrc_text(devices))
    return directory


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALSA", "PULSE"))}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_atomically(path: Path, data: bytes) -> None:
    """Create ``path`` in one step, so that a concurrent open never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def run_devices(home: Path, *specs: str, timeout: float = 60) -> dict[str, Any]:
    """The child's ``devices`` report: the device list, the default, each spec resolved."""
    done = subprocess.run(
        [sys.executable, __file__, "devices", *[a for s in specs for a in ("--resolve", s)]],
        env=child_env(home), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class Driver:
    """A capture child process, talked to in JSON lines.

    Every line the child prints is kept in :attr:`lines`; :meth:`expect` waits for one
    that matches. The child's stderr (ALSA's chatter) goes to ``stderr.log`` in
    ``home`` and is quoted when something times out.
    """

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.lines: list[dict[str, Any]] = []
        self._matched: set[int] = set()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr = (home / "stderr.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "capture", "--out", str(home / "out"), *args],
            env=child_env(home), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if line:
                try:
                    self._queue.put(json.loads(line))
                except json.JSONDecodeError:
                    self._queue.put({"unparsed": line})
        self._queue.put(None)

    def stderr_tail(self) -> str:
        self._stderr.flush()
        text = (self.home / "stderr.log").read_text(errors="replace")
        return "\n".join(line for line in text.splitlines()
                         if not line.startswith(("ALSA lib", "Cannot connect",
                                                 "jack server", "JackShm")))[-4000:]

    def expect(self, predicate: Callable[[dict[str, Any]], bool],
               timeout: float = 30) -> dict[str, Any]:
        """The first line that satisfies ``predicate`` and was not returned before."""
        deadline = time.monotonic() + timeout
        while True:
            for i, line in enumerate(self.lines):
                if i not in self._matched and predicate(line):
                    self._matched.add(i)
                    return line
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"timed out; lines so far: {self.lines[-20:]}\n"
                                     f"stderr: {self.stderr_tail()}") from None
            if item is None:
                raise AssertionError(f"the child exited ({self.process.wait()}); lines: "
                                     f"{self.lines[-20:]}\nstderr: {self.stderr_tail()}")
            self.lines.append(item)

    def event(self, code: str, timeout: float = 30) -> dict[str, Any]:
        return self.expect(lambda line: line.get("event") == code, timeout)

    def command(self, command: str, timeout: float = 30) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.expect(lambda line: line.get("reply") == command.split()[0], timeout)

    def wait_for_stats(self, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = 30) -> dict[str, Any]:
        """Poll ``stats`` until ``predicate(reply)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self.command("stats")
            if predicate(reply):
                return reply
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached; last stats: {reply}")
            time.sleep(0.02)

    def quit(self, timeout: float = 30) -> dict[str, Any]:
        """Stop capture; the child's final report (segments, stream state)."""
        self.command("quit", timeout)
        final = self.expect(lambda line: "final" in line, timeout)
        assert self.process.wait(timeout) == 0, self.stderr_tail()
        return final

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


# --- the child ---------------------------------------------------------------------------

def _emit(out: TextIO, data: dict[str, Any]) -> None:
    out.write(json.dumps(data) + "\n")
    out.flush()


def _file_is_open(path: str | None) -> bool:
    """Whether this process holds ``path`` open (the file plugin's ``infile``)."""
    if not path:
        return False
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target == path or target == path + " (deleted)":
            return True
    return False


def _devices_main(args: argparse.Namespace) -> int:
    import pyaudio

    from edge.audio.capture import list_input_devices, resolve_device
    from edge.core.errors import AudioSourceError

    report: dict[str, Any] = {"devices": [asdict(d) for d in list_input_devices()]}
    pa = pyaudio.PyAudio()
    try:
        report["default"] = int(pa.get_default_input_device_info()["index"])
    finally:
        pa.terminate()
    resolved: dict[str, Any] = {}
    for spec in args.resolve:
        # "int:N" passes the integer N, anything else the string itself.
        value: str | int = int(spec[4:]) if spec.startswith("int:") else spec
        try:
            resolved[spec] = asdict(resolve_device(value))
        except AudioSourceError as exc:
            resolved[spec] = {"error": str(exc)}
    report["resolve"] = resolved
    _emit(sys.stdout, report)
    return 0


def _capture_main(args: argparse.Namespace) -> int:
    import trio

    from edge.audio.capture import Chunk, MicEvent, MicSource

    out = sys.stdout
    keep_bytes = 2 * args.keep
    segments: list[bytearray] = [bytearray()]
    counts = {"samples": 0}
    rates: set[int] = set()

    source = MicSource(args.device, channels=args.channels, chunk_ms=args.chunk_ms,
                       backoff_base=args.backoff_base, backoff_max=args.backoff_max)

    def stats() -> dict[str, Any]:
        return asdict(source.statistics())

    async def consume(receive: trio.MemoryReceiveChannel[Chunk | MicEvent]) -> None:
        async for item in receive:
            if isinstance(item, Chunk):
                segment = segments[-1]
                if len(segment) < keep_bytes:
                    segment += item.pcm[: keep_bytes - len(segment)]
                counts["samples"] += len(item.pcm) // 2
                rates.add(item.sample_rate)
            else:
                if item.code != "mic_overrun":
                    segments.append(bytearray())
                _emit(out, {"event": item.code, "message": item.message,
                            "details": dict(item.details), "segment": len(segments) - 1,
                            "samples": counts["samples"]})

    async def wait_until(condition: Callable[[], bool], timeout: float = 10) -> float:
        started = trio.current_time()
        with trio.fail_after(timeout):
            while not condition():
                await trio.sleep(0.005)
        return trio.current_time() - started

    async def reply_when_resumed() -> None:
        # No reply until it is capturing again (the device may be gone meanwhile).
        await wait_until(lambda: source.statistics().state == "running"
                         and _file_is_open(args.infile), timeout=120)
        _emit(out, {"reply": "resume", "stats": stats(), "samples": counts["samples"],
                    "infile_open": _file_is_open(args.infile)})

    async def control(receive: trio.MemoryReceiveChannel[Chunk | MicEvent],
                      nursery: trio.Nursery) -> None:
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            command = line.strip()
            if command in ("quit", ""):
                _emit(out, {"reply": "quit"})
                return
            if command == "pause":
                source.pause()
                took = await wait_until(lambda: not source.statistics().stream_open
                                        and not _file_is_open(args.infile))
                chunks = source.statistics().chunks
                await trio.sleep(0.3)  # nothing may be captured meanwhile
                _emit(out, {"reply": "pause", "closed_after": took,
                            "chunks_at_close": chunks, "stats": stats(),
                            "infile_open": _file_is_open(args.infile)})
            elif command == "resume":
                source.resume()
                nursery.start_soon(reply_when_resumed)
            elif command == "stats":
                _emit(out, {"reply": "stats", "stats": stats(), "samples": counts["samples"],
                            "infile_open": _file_is_open(args.infile),
                            "queued": receive.statistics().current_buffer_used})
            else:
                _emit(out, {"reply": command, "error": "unknown command"})

    async def run() -> None:
        send, receive = trio.open_memory_channel[Chunk | MicEvent](args.queue)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, receive)
            await nursery.start(source.run, send)
            _emit(out, {"ready": stats(), "infile_open": _file_is_open(args.infile)})
            await control(receive, nursery)
            started = trio.current_time()
            nursery.cancel_scope.cancel()
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, segment in enumerate(segments):
            path = out_dir / f"segment-{i}.raw"
            path.write_bytes(bytes(segment))
            paths.append(str(path))
        _emit(out, {"final": stats(), "segments": paths, "rates": sorted(rates),
                    "samples": counts["samples"], "stopped_after": trio.current_time() - started,
                    "infile_open": _file_is_open(args.infile)})

    trio.run(run)
    return 0


def main(argv: list[str] | None = None) -> int:
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` dumps every thread's stack
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    devices = sub.add_parser("devices", help="list input devices, resolve specs; one JSON line")
    devices.add_argument("--resolve", action="append", default=[])
    capture = sub.add_parser("capture", help="capture with MicSource, driven over stdin")
    capture.add_argument("--device", default="edgemic")
    capture.add_argument("--infile", help="the device's infile, to watch it being opened")
    capture.add_argument("--channels", type=int)
    capture.add_argument("--chunk-ms", type=int, default=100)
    capture.add_argument("--keep", type=int, default=200_000,
                         help="samples kept per segment (a segment starts at each event)")
    capture.add_argument("--queue", type=int, default=100_000)
    capture.add_argument("--backoff-base", type=float, default=0.05)
    capture.add_argument("--backoff-max", type=float, default=0.2)
    capture.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.mode == "devices":
        return _devices_main(args)
    return _capture_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
