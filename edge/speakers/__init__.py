"""Speaker labels: diarization, the voiceprint store, identification.

- :mod:`edge.speakers.diarize`: one session's speakers from their vectors (pure numpy).
- :mod:`edge.speakers.voiceprints`: enrolled, named voiceprints in a file.
- :mod:`edge.speakers.identification`: both together, for the daemon.

The names below are the package's public face; the rest of the daemon imports them
from here, not from the modules behind them.
"""

from edge.speakers.diarize import Diarizer
from edge.speakers.identification import (
    UNAVAILABLE,
    SpeakerIdentification,
    SpeakerLabeler,
    SpeakerStatus,
    SpeakerTrack,
)
from edge.speakers.voiceprints import VoiceprintStore, VoiceprintStoreError, check_name

__all__ = [
    "UNAVAILABLE",
    "Diarizer",
    "SpeakerIdentification",
    "SpeakerLabeler",
    "SpeakerStatus",
    "SpeakerTrack",
    "VoiceprintStore",
    "VoiceprintStoreError",
    "check_name",
]
