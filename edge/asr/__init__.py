"""Speech recognition: the recogniser protocol, pool and labelling; Vosk; model files."""
