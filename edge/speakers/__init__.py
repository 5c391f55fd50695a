"""Speaker labels: diarization, the voiceprint store, identification."""
