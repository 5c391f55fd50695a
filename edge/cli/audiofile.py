"""Reading a recording for the offline commands (``transcribe``, ``speakers enroll``)."""

from __future__ import annotations

import sys
from pathlib import Path

from edge.audio.frames import FormatNotice, PcmDecoder, is_wav


def read_pcm(path: Path, default_rate: int, *, wav_only: bool = False
             ) -> tuple[bytes, int, list[FormatNotice]] | None:
    """The mono s16le PCM in ``path``, its rate and what to tell about its format
    (e.g. a stereo file mixed down), or None once the reason is printed.

    A WAV file is parsed (and mixed down to mono); anything else is raw PCM at
    ``default_rate``, unless ``wav_only`` or the name ends in ``.wav``. Blocking (reads
    the whole file).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"edge: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None
    if not data and not wav_only:
        print(f"edge: {path} is empty", file=sys.stderr)
        return None
    if (wav_only or path.suffix.lower() == ".wav") and not is_wav(data):
        print(f"edge: {path} is not a WAV file (no RIFF/WAVE header)", file=sys.stderr)
        return None
    decoder = PcmDecoder(default_rate)
    pcm, notices = decoder.feed(data)
    assert decoder.format is not None  # set by the first feed
    return pcm, decoder.format.sample_rate, notices
