"""Tests of the ``edge`` command: ``token``, configuration errors, ``serve`` start-up
failures, ``serve`` with ``edge client`` over a real socket, and offline ``transcribe``.

Commands that do not start a server are run through ``edge.cli.main`` in-process;
``serve``, ``client`` against it and ``transcribe`` (which loads the model) run as
subprocesses, as an operator would run them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge.cli import main
from edge.core.auth import AuthSettings, verify
from helpers import FIXTURES, READ_WRITE, SECRET, TEST_KEY_FILE, free_port, make_token
from tools.daemon import Daemon
from tools.daemon import http_get as daemon_get

EDGE = [sys.executable, "-m", "edge"]
WAV = FIXTURES / "speech_ko.wav"
PHRASES = FIXTURES / "phrases.json"
# Variables a developer's shell or a systemd unit may carry that would change what the
# command under test does.
FOREIGN = ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC",
           "WATCHDOG_PID", "JOURNAL_STREAM")
START_DEADLINE = 30  # the model loads in about 3 s


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``EDGE_*`` or systemd variables from outside; state in ``tmp_path``."""
    for name in list(os.environ):
        if name.startswith("EDGE_") or name in FOREIGN:
            monkeypatch.delenv(name)
    monkeypatch.setenv("EDGE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EDGE_JOURNAL_KEY_FILE", str(TEST_KEY_FILE))  # as an operator would


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``main`` configures the root logger for the process; undo that after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_env() -> dict[str, str]:
    """The (cleaned) environment for an ``edge`` subprocess, with the shared secret."""
    return {**os.environ, "EDGE_JWT_SECRET": SECRET}


def rsa_key_pair(tmp_path: Path) -> tuple[Path, str]:
    """A private key file for ``--private-key`` and the public key's PEM text."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "signing-key.pem"
    path.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return path, public


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# --- token ---------------------------------------------------------------------------

def test_token_prints_one_jwt_signed_with_the_configured_secret(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_JWT_SECRET", SECRET)
    before = time.time()
    code, out, err = run_main(
        capsys, "token", "--sub", "x", "--scope", "transcription:read", "--user-type", "nurse",
        "--claim", "session_limit=2", "--claim", "organization=hospital-id-456",
        "--ttl", "60")

    assert (code, err) == (0, "")
    assert out.endswith("\n") and out.count("\n") == 1, out
    token = out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "x"
    assert claims["scope"] == "transcription:read"
    assert claims["user_type"] == "nurse"
    assert claims["session_limit"] == 2 and type(claims["session_limit"]) is int
    assert claims["organization"] == "hospital-id-456"
    assert claims["exp"] - claims["iat"] == 60
    assert before - 1 <= claims["iat"] <= time.time() + 1
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "some-other-secret-that-is-long-enough!!", algorithms=["HS256"])


def test_token_defaults_are_accepted_by_the_server_verifier(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_JWT_SECRET", SECRET)
    code, out, _ = run_main(capsys, "token", "--sub", "device-7")

    assert code == 0
    claims = verify(out.strip(), AuthSettings(algorithm="HS256", key=SECRET), now=time.time())
    assert claims.sub == "device-7"
    assert claims.scopes == frozenset(READ_WRITE.split())
    assert claims.user_type == "doctor"
    assert claims.expires_at - claims.issued_at == 3600


def test_token_with_a_private_key_is_rs256(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key_path, public_pem = rsa_key_pair(tmp_path)
    # No secret is configured: signing with a private key does not need one.
    code, out, err = run_main(capsys, "token", "--sub", "x", "--private-key", str(key_path),
                              "--ttl", "60")

    assert (code, err) == (0, "")
    assert out.count("\n") == 1
    token = out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, public_pem, algorithms=["RS256"])
    assert claims["sub"] == "x"
    assert claims["exp"] - claims["iat"] == 60
    verified = verify(token, AuthSettings(algorithm="RS256", key=public_pem), now=time.time())
    assert verified.sub == "x"


def test_token_dev_creates_and_uses_a_private_development_secret(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_main(capsys, "token", "--dev", "--sub", "x")

    assert code == 0
    secret_file = tmp_path / "state" / "dev-jwt-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32
    assert jwt.decode(out.strip(), secret, algorithms=["HS256"])["sub"] == "x"
    # The second run reuses the secret rather than replacing it.
    code, out, _ = run_main(capsys, "token", "--dev", "--sub", "y")
    assert code == 0
    assert jwt.decode(out.strip(), secret, algorithms=["HS256"])["sub"] == "y"


def test_token_without_a_secret_is_a_usage_error_naming_auth_secret(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "token", "--sub", "x")

    assert (code, out) == (2, "")
    assert err.startswith("edge: config: auth.secret: "), err


def test_token_with_a_short_secret_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_JWT_SECRET", "too-short")
    code, out, err = run_main(capsys, "token", "--sub", "x")

    assert (code, out) == (2, "")
    assert "auth.secret" in err and "32 bytes" in err


@pytest.mark.parametrize(("argv", "names"), [
    (["--claim", "no-equals-sign"], "--claim"),
    (["--ttl", "0"], "--ttl"),
])
def test_token_bad_arguments_are_usage_errors(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        argv: list[str], names: str) -> None:
    monkeypatch.setenv("EDGE_JWT_SECRET", SECRET)
    code, out, err = run_main(capsys, "token", "--sub", "x", *argv)

    assert (code, out) == (2, "")
    assert names in err


@pytest.mark.parametrize("content", [None, "not a PEM key\n"], ids=["missing", "not-a-key"])
def test_token_with_an_unusable_private_key_names_the_option(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_text(content)
    code, out, err = run_main(capsys, "token", "--sub", "x", "--private-key", str(path))

    assert (code, out) == (2, "")
    assert "--private-key" in err and str(path) in err


# --- configuration errors --------------------------------------------------------------

@pytest.mark.parametrize(("toml", "key"), [
    ("[server]\nbogus = 1\n", "server.bogus"),
    ('[server]\nport = "x"\n', "server.port"),
    ("[server]\nport = 70000\n", "server.port"),
    ("[bogus]\nx = 1\n", "bogus"),
    ('[auth]\nalgorithm = "ES256"\n', "auth.algorithm"),
    ("[recognizer]\npartial_results = 1\n", "recognizer.partial_results"),
    ("[server\n", "--config"),
])
def test_a_bad_config_file_is_exit_2_naming_the_key(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(toml)
    code, out, err = run_main(capsys, "serve", "--config", str(path))

    assert code == 2
    assert out == ""
    assert err.startswith(f"edge: config: {key}: "), err
    assert err.count("\n") == 1, err


def test_a_missing_config_file_is_exit_2(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    code, _, err = run_main(capsys, "serve", "--config", str(missing))

    assert code == 2
    assert "--config" in err and str(missing) in err


def test_a_bad_flag_value_names_the_key_it_overrides(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "serve", "--port", "70000")

    assert code == 2
    assert "server.port" in err


def test_edge_config_from_the_environment_is_read(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[log]\nlevel = \"loud\"\n")
    monkeypatch.setenv("EDGE_CONFIG", str(path))
    # main() reads $EDGE_CONFIG when its parser is built, as the installed command does.
    code, _, err = run_main(capsys, "token", "--sub", "x")

    assert code == 2
    assert "log.level" in err


def test_serve_without_a_secret_stops_before_loading_the_model(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "serve", "--host", "127.0.0.1", "--port", "0")

    assert code == 2
    assert out == ""
    assert "auth.secret" in err
    assert "loading model" not in err  # keys are checked first


# --- serve: start-up failures ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "not-a-model"])
async def test_serve_with_a_bad_model_exits_with_one_line(tmp_path: Path, kind: str) -> None:
    model = tmp_path / "model"
    if kind == "not-a-model":
        model.mkdir()
        (model / "README").write_text("not a Vosk model\n")
    with trio.fail_after(START_DEADLINE):
        done = await trio.run_process(
            [*EDGE, "serve", "--host", "127.0.0.1", "--port", "0", "--model", str(model),
             "--log-level", "warning"],
            env=subprocess_env(), capture_stdout=True, capture_stderr=True, check=False)

    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1, stderr
    assert str(model) in stderr
    assert done.stdout == b""


async def test_serve_on_a_port_in_use_exits_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(START_DEADLINE):
            done = await trio.run_process(
                [*EDGE, "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "warning"],
                env=subprocess_env(), capture_stdout=True, capture_stderr=True, check=False)

    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"edge: cannot listen on 127.0.0.1:{port}: "), stderr


# --- serve + client --------------------------------------------------------------------

async def test_serve_and_client_transcribe_the_fixture(
        tmp_path: Path, phrases: dict[str, Any]) -> None:
    env = subprocess_env()
    daemon = Daemon(tmp_path, secret=SECRET)
    try:
        with trio.fail_after(120):
            await trio.to_thread.run_sync(daemon.start, START_DEADLINE)
            status, health = await trio.to_thread.run_sync(daemon_get, daemon.port)
            assert status == 200, health
            assert health["status"] == "ok"
            assert health["sessions"] == 0

            minted = await trio.run_process(
                [*EDGE, "token", "--sub", "cli-test"], env=env, capture_stdout=True)
            token = minted.stdout.decode().strip()
            client = await trio.run_process(
                [*EDGE, "client", daemon.url, str(WAV), "--token", token, "--fast",
                 "--phrases", str(PHRASES)],
                env=env, capture_stdout=True, capture_stderr=True, check=False)
            assert client.returncode == 0, client.stderr.decode()
            messages = json_lines(client.stdout.decode())
            assert messages[0]["type"] == "session_init"
            assert messages[-1]["type"] == "session_end"
            assert messages[-1]["reason"] == "end"
            finals = [m["text"] for m in messages
                      if m["type"] == "transcription" and m["is_final"]]
            assert finals == phrases["utterances"]

            # A token signed with another secret, given through $EDGE_TOKEN.
            forged = make_token(secret="a-different-secret-that-is-long-enough!!")
            refused = await trio.run_process(
                [*EDGE, "client", daemon.url, str(WAV), "--fast"],
                env={**env, "EDGE_TOKEN": forged},
                capture_stdout=True, capture_stderr=True, check=False)
            assert refused.returncode == 1
            assert refused.stdout == b""
            assert "401" in refused.stderr.decode()
            daemon.signal(signal.SIGTERM)
            exit_code = await trio.to_thread.run_sync(daemon.wait, 15)
        assert exit_code == 0, daemon.log_tail()
    finally:
        await trio.to_thread.run_sync(daemon.stop)


def test_client_without_a_server_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws/transcribe"
    code, out, err = run_main(capsys, "client", url, str(WAV), "--token", "x", "--fast")

    assert (code, out) == (1, "")
    assert "cannot connect" in err and url in err


def test_client_without_a_server_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws/transcribe"
    _, _, err = run_main(capsys, "client", url, str(WAV), "--token", "x", "--fast")

    reason = err.strip().removeprefix(f"edge: cannot connect to {url}:").strip()
    assert reason


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/ws/transcribe", "ws://[::1/ws"])
def test_client_with_an_unusable_url_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, _, err = run_main(capsys, "client", url, str(WAV), "--token", "x")

    assert code == 2
    assert url in err


def test_client_without_a_token_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "client", "ws://127.0.0.1:9/ws/transcribe", str(WAV))

    assert code == 2
    assert "--token" in err and "EDGE_TOKEN" in err


# --- transcribe ------------------------------------------------------------------------

async def transcribe(*argv: str) -> tuple[list[dict[str, Any]], str]:
    with trio.fail_after(60):
        done = await trio.run_process(
            [*EDGE, "transcribe", str(WAV), *argv], env=subprocess_env(),
            capture_stdout=True, capture_stderr=True, check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "Traceback" not in stderr
    return json_lines(done.stdout.decode()), stderr


async def test_transcribe_with_phrases_prints_the_utterances(phrases: dict[str, Any]) -> None:
    lines, _ = await transcribe("--phrases", str(PHRASES))

    assert [line["text"] for line in lines] == phrases["utterances"]
    assert all(line["type"] == "transcription" and line["is_final"] is True for line in lines)
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert len({line["session_id"] for line in lines}) == 1
    for line in lines:
        assert [w["word"] for w in line["words"]] == line["text"].split()
    starts = [line["start_ms"] for line in lines]
    assert starts == sorted(starts)


async def test_transcribe_without_phrases_prints_finals_with_words() -> None:
    lines, _ = await transcribe()

    assert lines, "no final result"
    assert all(line["type"] == "transcription" and line["is_final"] is True for line in lines)
    assert any(line["words"] for line in lines)
    for line in lines:
        for word in line["words"]:
            assert set(word) == {"word", "start_ms", "end_ms", "confidence"}


def test_transcribe_a_missing_file_is_exit_1(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    code, out, err = run_main(capsys, "transcribe", str(missing))

    assert (code, out) == (1, "")
    assert f"cannot read {missing}" in err


def test_transcribe_with_a_missing_model_is_exit_1(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-model"
    code, out, err = run_main(capsys, "transcribe", str(WAV), "--model", str(missing))

    assert (code, out) == (1, "")
    assert err.startswith("edge: ") and str(missing) in err
