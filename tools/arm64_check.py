"""The arm64 check (``tools/arm64-check``): install and transcribe in an emulated
Raspberry Pi OS, and compare the transcript with this machine's.

64-bit Raspberry Pi OS bookworm is Debian 12 arm64 with the Foundation's extra packages.
The check builds a minimal Debian 12 arm64 root with ``mmdebstrap`` (cached: a tarball
of the pristine root), unpacks a fresh copy of it for every run, and in that copy, under
``qemu-user`` through ``binfmt_misc``:

1. runs ``systemd/install.sh`` as a fresh device would (apt, the venv, pip; no systemd
   runs in a chroot, so the installer installs the unit without starting it);
2. imports the compiled parts (numpy, vosk's library, PyAudio against PortAudio) and
   checks that the interpreter really is aarch64;
3. runs ``edge check`` on the installed config (it loads the model);
4. runs ``edge transcribe`` on the speech fixture, free and with its phrase list;
5. starts ``edge serve`` with the installed config, streams the fixture through one
   Live API session (``edge client``, which must end normally with words) and stops it
   with SIGTERM (a non-zero exit code is reported as a warning),

then runs the same ``edge transcribe`` commands here (x86) and asserts that both give
the same words with start and end times within 100 ms.

The root's mounts (/dev, /proc, /sys, the host's local pip indexes read-only under
/host, the download caches) are made inside a private mount namespace (``unshare``), so
they disappear with the step's process whatever happens, and removing the working root
never reaches through them. Step times are wall times of an emulated system: they say
how long the check takes, not how fast a Pi is.

Everything here blocks; it runs as root (chroot, mount).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE_MS = 100
SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
HOST_PACKAGES = ("mmdebstrap", "qemu-user-static", "binfmt-support")
# Debian architecture -> (qemu's binfmt name, what platform.machine() says inside).
ARCHES = {"arm64": ("qemu-aarch64", "aarch64")}
SPEECH = "tests/fixtures/speech_ko.wav"
PHRASES = "tests/fixtures/phrases.json"
TRANSCRIBE_RUNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("free dictation", ()),
    ("phrase list", ("--phrases", PHRASES)),
)
# Run by the root's Python: the daemon as the unit would start it (its config, the
# secret file, a state directory), on a loopback port, ready when /healthz answers; one
# Live API session streams the fixture; then SIGTERM. Prints the client's messages and
# a last line with the daemon's exit code.
SERVE_SCRIPT = """
import os, signal, subprocess, sys, time, urllib.error, urllib.request
port, edge, config = sys.argv[1], "/opt/edge/venv/bin/edge", ["--config", "/etc/edge/edge.toml"]
os.makedirs("/var/lib/edge", mode=0o700, exist_ok=True)
env = {**os.environ, "EDGE_JWT_SECRET_FILE": "/etc/edge/jwt-secret",
       "EDGE_JOURNAL_KEY_FILE": "/etc/edge/journal-key", "EDGE_STATE_DIR": "/var/lib/edge"}
server = subprocess.Popen([edge, "serve", *config, "--host", "127.0.0.1", "--port", port],
                          env=env)
try:
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            break
        except urllib.error.HTTPError:
            break  # 503: up, degraded (say, no NTP): it still serves
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"edge serve never answered /healthz (exit {server.poll()})")
            time.sleep(0.5)
    token = subprocess.run([edge, "token", *config, "--sub", "arm64-check"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    client = subprocess.run(
        [edge, "client", f"ws://127.0.0.1:{port}/ws/transcribe",
         "tests/fixtures/speech_ko.wav", "--fast"],
        env={**env, "EDGE_TOKEN": token}, capture_output=True, text=True, timeout=900)
    sys.stderr.write(client.stderr)
    if client.returncode != 0:
        sys.exit(f"edge client exited {client.returncode}")
    sys.stdout.write(client.stdout)
finally:
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=120)
print('{"type": "serve_exit", "code": %d}' % code)
"""
IN_ROOT_SRC = "/root/edge"
IN_ROOT_EDGE = "/opt/edge/venv/bin/edge"
IN_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CheckFailed(Exception):
    """A step failed; the message says which and why."""


# -- pure parts -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Word:
    word: str
    start_ms: int
    end_ms: int


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How a transcript compares with the reference: ``problems`` is empty on a match."""

    words: int
    max_shift_ms: int
    problems: tuple[str, ...]

    @property
    def matches(self) -> bool:
        return not self.problems


def parse_transcript(text: str, *, other_messages: bool = False) -> list[Word]:
    """The words of the finals in ``edge transcribe``'s output (one JSON message a line),
    in order. Raises ValueError naming the line for anything else, or, with
    ``other_messages`` (``edge client``'s output), skips other Live API messages."""
    words: list[Word] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"line {number}: not JSON ({exc})") from exc
        if not isinstance(message, dict) or message.get("type") != "transcription":
            if other_messages and isinstance(message, dict) and "type" in message:
                continue
            raise ValueError(f"line {number}: not a transcription message")
        if message.get("is_final") is not True:
            continue
        entries = message.get("words")
        if not isinstance(entries, list):
            raise ValueError(f"line {number}: a final without a words list")
        for entry in entries:
            if not (isinstance(entry, dict) and isinstance(entry.get("word"), str)
                    and type(entry.get("start_ms")) is int
                    and type(entry.get("end_ms")) is int):
                raise ValueError(f"line {number}: a word without word, start_ms, end_ms")
            words.append(Word(entry["word"], entry["start_ms"], entry["end_ms"]))
    return words


def compare_transcripts(reference: Sequence[Word], other: Sequence[Word],
                        tolerance_ms: int = TOLERANCE_MS) -> Comparison:
    """Same words in the same order, each starting and ending within ``tolerance_ms``
    of the reference's (inclusive)."""
    problems: list[str] = []
    if [w.word for w in reference] != [w.word for w in other]:
        diff = difflib.unified_diff([w.word for w in reference], [w.word for w in other],
                                    "reference", "this run", lineterm="", n=1)
        problems.append("the words differ:\n" + "\n".join(diff))
        return Comparison(len(other), 0, tuple(problems))
    if not reference:
        problems.append("no words at all")
    max_shift = 0
    for index, (ref, got) in enumerate(zip(reference, other, strict=True)):
        shift = max(abs(ref.start_ms - got.start_ms), abs(ref.end_ms - got.end_ms))
        max_shift = max(max_shift, shift)
        if shift > tolerance_ms:
            problems.append(
                f"word {index + 1} ({ref.word!r}) at {got.start_ms}-{got.end_ms} ms, "
                f"reference {ref.start_ms}-{ref.end_ms} ms (more than {tolerance_ms} ms)")
    return Comparison(len(other), max_shift, tuple(problems))


def translate_pip_config(listing: str, exists: Callable[[str], bool],
                         host_dir: str = "/host") -> tuple[dict[str, str], list[str]]:
    """This machine's pip settings as environment variables for the root.

    ``listing`` is ``pip config list`` output (``global.find-links='/opt/wheels'``,
    ``:env:.cert='...'``). Local paths and ``file://`` URLs that exist here are moved
    under ``host_dir``, where the caller mounts them read-only (for a local index, its
    parent directory: index pages link to files beside them). Returns the variables
    (``PIP_FIND_LINKS``...) and the host paths to mount. Command sections (``install.``)
    override ``global.``, and the environment overrides both, as in pip.
    """
    ranked: list[tuple[int, str, str]] = []
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if not sep or "." not in key:
            continue
        section, _, name = key.rpartition(".")
        rank = 0 if section == "global" else 2 if section == ":env:" else 1
        if section not in ("global", ":env:", "install", "download", "wheel"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        ranked.append((rank, name, value))
    env: dict[str, str] = {}
    mounts: list[str] = []
    for _, name, value in sorted(ranked, key=lambda item: item[0]):
        tokens = []
        for token in value.split():
            path = token.removeprefix("file://") if token.startswith("file://") else token
            if path.startswith("/") and exists(path):
                # A local index links its files relatively, usually beside simple/.
                mount = (path.rstrip("/").rpartition("/")[0] or "/"
                         if name.endswith("index-url") else path)
                if mount not in mounts:
                    mounts.append(mount)
                token = token.replace(path, host_dir + path, 1)
            tokens.append(token)
        env["PIP_" + name.upper().replace("-", "_")] = " ".join(tokens)
    return env, sorted(mounts)


# -- the machine ------------------------------------------------------------------------


@dataclasses.dataclass
class Timings:
    steps: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    paused: float = 0.0
    pause_file: Path | None = None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.pause_file is not None:
            began = time.monotonic()
            announced = False
            while self.pause_file.exists():
                if not announced:
                    print(f"  (waiting while {self.pause_file} exists)", flush=True)
                    announced = True
                time.sleep(20)
            self.paused += time.monotonic() - began
        print(f"- {name} ...", flush=True)
        began = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - began
            self.steps.append((name, took))
            print(f"  {name}: {took:.1f} s", flush=True)


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), text=True, check=False, **kwargs)


def ensure_host(arch: str) -> None:
    """mmdebstrap and qemu-user-static installed, qemu registered with binfmt_misc."""
    missing = [p for p in HOST_PACKAGES
               if run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if missing:
        print(f"  installing {' '.join(missing)}", flush=True)
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
            done = run(argv, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       capture_output=True)
            if done.returncode != 0:
                raise CheckFailed(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    entry = binfmt / ARCHES[arch][0]
    if not (binfmt / "status").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], capture_output=True)
    if not entry.exists() or "enabled" not in entry.read_text():
        run(["update-binfmts", "--enable", ARCHES[arch][0]], capture_output=True)
    if not entry.exists() or "enabled" not in entry.read_text():
        raise CheckFailed(
            f"{entry} is not registered: mount -t binfmt_misc binfmt_misc {binfmt} and "
            f"update-binfmts --enable {ARCHES[arch][0]} (needs a privileged machine)")
    if "F" not in next((x for x in entry.read_text().splitlines() if x.startswith("flags:")),
                       ""):
        raise CheckFailed(f"{entry} lacks the F flag (qemu-user-static registers with it)")


def build_base(tarball: Path, arch: str, log: Path) -> None:
    partial = tarball.with_suffix(".partial.tar")
    argv = ["mmdebstrap", f"--arch={arch}", "--variant=minbase", SUITE, str(partial),
            *MIRRORS]
    with log.open("w") as out:
        done = run(argv, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise CheckFailed(f"mmdebstrap failed (see {log}):\n{tail(log)}")
    partial.rename(tarball)


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def copy_source(dest: Path, ref: str | None) -> str:
    """The repository as committed at ``ref`` (``git archive``), or with ``ref`` None its
    tracked files as they are in the working tree. Says what was copied."""
    dest.mkdir(parents=True)
    if ref is not None:
        commit = run(["git", "-C", str(ROOT), "rev-parse", "--short", ref],
                     capture_output=True)
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", ref],
                                   stdout=subprocess.PIPE)
        unpack = run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout,
                     capture_output=True)
        if archive.wait() != 0 or unpack.returncode != 0 or commit.returncode != 0:
            raise CheckFailed(f"git archive {ref} failed: {commit.stderr}{unpack.stderr}")
        return f"commit {commit.stdout.strip()}"
    listing = run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True)
    if listing.returncode != 0:
        raise CheckFailed(f"git ls-files failed: {listing.stderr}")
    count = 0
    for name in filter(None, listing.stdout.split("\0")):
        source = ROOT / name
        if not source.exists() and not source.is_symlink():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
        count += 1
    return f"the working tree's {count} tracked files"


@dataclasses.dataclass
class Root:
    """An unpacked root and what each command in it gets: mounts and environment."""

    path: Path
    binds: list[tuple[Path, str, bool]]  # (host path, path inside the root, read-only)
    env: dict[str, str]
    logs: Path

    def run(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None
            ) -> str:
        """Runs argv in the root (private mounts, a clean environment, in the copy of
        the repository); returns its stdout. Its stderr goes to the step's log."""
        lines = ["set -eu", f"r={shlex.quote(str(self.path))}",
                 'mount --rbind /dev "$r/dev"', 'mount -t proc proc "$r/proc"',
                 'mount --rbind /sys "$r/sys"']
        for host, inside, read_only in self.binds:
            dst = shlex.quote(str(self.path) + inside)
            src = shlex.quote(str(host))
            if host.is_dir():
                lines.append(f"mkdir -p {dst}")
            else:
                lines.append(f"mkdir -p $(dirname {dst}); touch {dst}")
            lines.append(f"mount --bind {src} {dst}")
            if read_only:
                lines.append(f"mount -o remount,bind,ro {dst}")
        variables = {"PATH": IN_ROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8",
                     **self.env, **(env or {})}
        # In the copy of the repository, as here: the fixtures' paths are relative.
        command = ["chroot", str(self.path), "/usr/bin/env", "-i", "-C", IN_ROOT_SRC,
                   *(f"{k}={v}" for k, v in variables.items()), *argv]
        lines.append("exec " + " ".join(shlex.quote(x) for x in command))
        log = self.logs / f"{name.replace(' ', '-')}.log"
        with log.open("w") as err:
            done = run(["unshare", "--mount", "--propagation", "private", "--",
                        "bash", "-c", "\n".join(lines)], stdout=subprocess.PIPE, stderr=err)
        if done.returncode != 0:
            with log.open("a") as err:
                err.write("--- stdout\n" + done.stdout)
            raise CheckFailed(f"{name} exited {done.returncode} (see {log}):\n{tail(log)}")
        log.with_suffix(".out").write_text(done.stdout)
        return done.stdout


def host_pip_settings() -> tuple[dict[str, str], list[tuple[Path, str, bool]]]:
    pip = ROOT / ".venv" / "bin" / "pip"
    listing = run([str(pip), "config", "list"], capture_output=True)
    if listing.returncode != 0:
        raise CheckFailed(f"pip config list failed: {listing.stderr}")
    env, paths = translate_pip_config(listing.stdout, os.path.exists)
    # The root's pip reads these settings only, not config files of its own.
    env["PIP_CONFIG_FILE"] = os.devnull
    return env, [(Path(p), "/host" + p, True) for p in paths]


def reference_transcripts() -> dict[str, str]:
    edge = ROOT / ".venv" / "bin" / "edge"
    if not edge.exists():
        raise CheckFailed(f"{edge} is missing: run bash .ci/setup first")
    out = {}
    for label, extra in TRANSCRIBE_RUNS:
        done = run([str(edge), "transcribe", SPEECH, *extra], cwd=ROOT, capture_output=True)
        if done.returncode != 0:
            raise CheckFailed(f"edge transcribe ({label}) here failed:\n{done.stderr[-2000:]}")
        out[label] = done.stdout
    return out


def free_port() -> int:
    """A loopback port nobody listens on now (the root shares this machine's network)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def default_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "edge-arm64" if xdg else Path("/var/cache/edge-arm64")


def check(arch: str, cache: Path, *, ref: str | None, rebuild: bool, keep: bool,
          pause_file: Path | None) -> int:
    machine = ARCHES[arch][1]
    timings = Timings(pause_file=pause_file)
    began = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    tarball = cache / f"{SUITE}-{arch}.tar"
    apt_cache, pip_cache = cache / f"apt-{arch}", cache / f"pip-{arch}"
    work, logs = cache / f"work-{arch}", cache / f"logs-{arch}"
    print(f"arm64-check: Debian 12 {SUITE} {arch} under qemu-user emulation; times are "
          "those of the check's steps, not of a device", flush=True)

    with timings.step("host tools"):
        ensure_host(arch)
    if rebuild:
        tarball.unlink(missing_ok=True)
        shutil.rmtree(apt_cache, ignore_errors=True)
        shutil.rmtree(pip_cache, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(mode=0o700)
    cached = tarball.exists()
    with timings.step("base root (cached)" if cached else "base root (mmdebstrap)"):
        if not cached:
            build_base(tarball, arch, logs / "mmdebstrap.log")
    with timings.step("unpack root"):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        done = run(["tar", "-xpf", str(tarball), "--numeric-owner", "-C", str(work)],
                   capture_output=True)
        if done.returncode != 0:
            raise CheckFailed(f"unpacking {tarball} failed: {done.stderr[-2000:]}")
        shutil.copy(Path("/etc/resolv.conf").resolve(), work / "etc" / "resolv.conf")
        copied = copy_source(work / IN_ROOT_SRC.lstrip("/"), ref)
        print(f"  {copied} copied to {IN_ROOT_SRC}", flush=True)
        # Downloads are kept between runs; wheels pip builds (PyAudio) are not, so
        # every run compiles what a Pi would compile.
        apt_cache.mkdir(exist_ok=True, mode=0o700)
        (apt_cache / "partial").mkdir(exist_ok=True)
        shutil.rmtree(pip_cache / "wheels", ignore_errors=True)
        pip_cache.mkdir(exist_ok=True, mode=0o700)
    pip_env, pip_binds = host_pip_settings()
    root = Root(work, [*pip_binds, (apt_cache, "/var/cache/apt/archives", False),
                       (pip_cache, "/root/.cache/pip", False)], pip_env, logs)

    try:
        with timings.step("install.sh"):
            out = root.run("install", ["bash", f"{IN_ROOT_SRC}/systemd/install.sh"])
            print("\n".join("  | " + x for x in out.splitlines()[-3:]), flush=True)
            if not (work / "etc/systemd/system/edge.service").exists():
                raise CheckFailed("install.sh did not install the unit")
        with timings.step("imports"):
            out = root.run("imports", [
                "/opt/edge/venv/bin/python", "-c",
                "import platform, numpy, vosk, pyaudio; "
                "from importlib.metadata import version as v; "
                "print(platform.machine(), 'numpy', numpy.__version__, 'vosk', v('vosk'), "
                "'pyaudio', v('pyaudio'), '|', pyaudio.get_portaudio_version_text())"])
            print("  | " + out.strip(), flush=True)
            if out.split()[:1] != [machine]:
                raise CheckFailed(f"the root's Python says {out.split()[:1]}, not {machine}")
        with timings.step("edge check"):
            out = root.run("check", [IN_ROOT_EDGE, "check", "--config", "/etc/edge/edge.toml"],
                           env={"EDGE_JWT_SECRET_FILE": "/etc/edge/jwt-secret",
                                "EDGE_JOURNAL_KEY_FILE": "/etc/edge/journal-key",
                                "EDGE_STATE_DIR": "/var/lib/edge"})
            print("\n".join("  | " + x for x in out.splitlines()), flush=True)
            if not any(x.startswith("ok   model:") and " loads " in x for x in out.splitlines()):
                raise CheckFailed("edge check did not load the model")
        emulated: dict[str, str] = {}
        for label, extra in TRANSCRIBE_RUNS:
            with timings.step(f"edge transcribe, {label}"):
                emulated[label] = root.run(
                    f"transcribe {label}",
                    [IN_ROOT_EDGE, "transcribe", SPEECH, *extra])
        with timings.step("edge serve and one Live API session"):
            out = root.run("serve", ["/opt/edge/venv/bin/python", "-c", SERVE_SCRIPT,
                                     str(free_port())])
            served = parse_transcript(out, other_messages=True)
            if not served:
                raise CheckFailed(f"the Live API session heard no words:\n{out[-2000:]}")
            code = json.loads(out.splitlines()[-1])["code"]
            print(f"  | {len(served)} words in the session's finals; edge serve exited "
                  f"{code} on SIGTERM", flush=True)
            if code != 0:
                # Seen once in three runs under qemu-user (SIGSEGV after the stop began),
                # never here on x86: reported, not yet failed on, until it is known
                # whether a Pi does it too.
                print(f"  WARNING: edge serve exited {code} on SIGTERM under emulation "
                      f"(see {logs / 'serve.log'})", flush=True)
        with timings.step("edge transcribe here (x86 reference)"):
            reference = reference_transcripts()
        failed = False
        for label, _ in TRANSCRIBE_RUNS:
            result = compare_transcripts(parse_transcript(reference[label]),
                                         parse_transcript(emulated[label]))
            if result.matches:
                print(f"  {label}: the same {result.words} words, times within "
                      f"{result.max_shift_ms} ms of x86", flush=True)
            else:
                failed = True
                print(f"  {label}: MISMATCH\n" + "\n".join(result.problems), flush=True)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - began - timings.paused
    print("steps: " + ", ".join(f"{n} {t:.0f} s" for n, t in timings.steps))
    verdict = "FAILED" if failed else "passed"
    print(f"arm64-check: {verdict} in {total:.0f} s ({'warm' if cached else 'cold'} cache "
          f"{cache}){'; root kept at ' + str(work) if keep else ''}", flush=True)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/arm64-check", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--arch", choices=sorted(ARCHES), default="arm64")
    parser.add_argument("--cache", type=Path, default=default_cache(),
                        help="where the base root and downloads are kept "
                             "(default: $XDG_CACHE_HOME/edge-arm64 or /var/cache/edge-arm64)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ref", default="HEAD",
                        help="the commit to install (git archive; default HEAD)")
    source.add_argument("--worktree", action="store_true",
                        help="install the working tree's tracked files instead, edits included")
    parser.add_argument("--rebuild", action="store_true",
                        help="build the base root again and drop the download caches")
    parser.add_argument("--keep", action="store_true",
                        help="keep the installed root (in the cache) for a look inside")
    parser.add_argument("--pause-while", type=Path, metavar="FILE",
                        help="before each step, wait while FILE exists (not counted)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("arm64-check: run as root (it builds a root file system and chroots)",
              file=sys.stderr)
        return 2
    try:
        return check(args.arch, args.cache.resolve(), ref=None if args.worktree else args.ref,
                     rebuild=args.rebuild, keep=args.keep, pause_file=args.pause_while)
    except CheckFailed as exc:
        print(f"arm64-check: FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
