"""Audio: WAV and PCM frames and the level meter (pure); room capture through PyAudio."""
