"""Speaker labels on a model loaded after the start: a session in another language gets
the daemon's one speaker model, so its voices are labelled and a voice enrolled through
a session of one language is named in a session of another.

Only the Korean model is installed on these machines: the second language (``xx``) is
the real Korean model directory linked under another tag (as in test_live_languages);
the conversation is Korean, recognised by the Korean model under either tag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speaker_audio import SPK_MODEL, conversation, finals, session
from test_live_languages import installed
from test_speaker_sessions import enroll_by_socket, labelled_by_turn


async def test_a_later_model_labels_and_names_speakers_with_the_one_speaker_model(
        start_server: Any, tmp_path: Path) -> None:
    server = await start_server(recognizer={"speaker_model": str(SPK_MODEL),
                                            "models": installed(tmp_path)},
                                server={"state_dir": str(tmp_path / "state")})
    models = server.boundary.engine.models
    audio, turns = conversation(["kim", "park"])
    init, messages = await session(server, audio, query="?language=xx")
    assert (init["language"], init["speaker_identification"]) == ("xx", True)
    xx, ko = models.slots["xx"].model, models.slots["ko"].model
    assert xx is not None and ko is not None and xx is not ko
    # One speaker model in memory for every language: one space of voiceprints.
    assert xx.speaker_model is not None and xx.speaker_model is ko.speaker_model
    pairs = labelled_by_turn(finals(messages), turns)
    labelled = [(who, label) for who, label in pairs if label is not None]
    assert len(labelled) >= len(turns)
    assert all(label == ("Speaker 1" if who == "kim" else "Speaker 2")
               for who, label in labelled), pairs

    # Enrolled in the default language, named in the other.
    enrolled = await enroll_by_socket(server, "kim", "kim")
    assert enrolled[-2]["type"] == "enrolled"
    _, messages = await session(server, audio, query="?language=xx")
    pairs = labelled_by_turn(finals(messages), turns)
    assert all(label == ("kim" if who == "kim" else "Speaker 1")
               for who, label in pairs if label is not None), pairs
    assert sum(label == "kim" for _, label in pairs) >= sum(t.speaker == "kim"
                                                            for t in turns)
