"""Speaker labels: diarization, the voiceprint store, identification.

The names below are the package's public face; the rest of the daemon imports them
from here, not from the modules behind them.
"""

from edge.speakers.identification import (
    UNAVAILABLE,
    Diarizer,
    SpeakerIdentification,
    SpeakerLabeler,
    SpeakerStatus,
    SpeakerTrack,
    VoiceprintStore,
    VoiceprintStoreError,
    check_name,
)

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
