"""edge: an offline transcription appliance serving the Live API over WebSocket."""

from __future__ import annotations

__version__ = "0.1.0"
