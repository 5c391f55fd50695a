"""Ever-new speech for memory soaks: espeak-ng voices reading random Korean syllables.

The worst case for a dynamic-graph model's recogniser: every utterance brings words it
has not met, so its graph cache never stops growing (a clinic's speech repeats itself
far more). Utterances are random Hangul syllables in words of one to four, read by one
of several espeak-ng voices, separated by 0.5 to 1.2 s of silence.

Needs ``espeak-ng`` and ``sox`` (``apt-get install espeak-ng sox``). Generation costs
about 0.05 s of CPU per second of speech, in a thread of its own (:class:`Babble`).
"""

from __future__ import annotations

import queue
import random
import shutil
import subprocess
import threading

RATE = 16000
VOICES = ("ko", "ko+m1", "ko+m3", "ko+f2", "ko+f4", "ko+m5")


def random_text(rng: random.Random, words: int) -> str:
    return " ".join(
        "".join(chr(0xAC00 + rng.randrange(11172)) for _ in range(rng.randint(1, 4)))
        for _ in range(words))


def speak(text: str, voice: str) -> bytes:
    """``text`` read by ``voice``: mono s16le PCM at 16 kHz (blocking)."""
    espeak = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text],
                            capture_output=True, check=True)
    sox = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(RATE), "-c", "1",
                          "-b", "16", "-e", "signed-integer", "-"],
                         input=espeak.stdout, capture_output=True, check=True)
    return sox.stdout


def utterance(rng: random.Random) -> bytes:
    """One utterance of 3 to 8 random words and the silence after it."""
    pcm = speak(random_text(rng, rng.randint(3, 8)), rng.choice(VOICES))
    pause = int(RATE * rng.uniform(0.5, 1.2))
    return pcm + b"\0\0" * pause


def check_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install espeak-ng sox")


class Babble:
    """An endless stream of ever-new speech, made ahead in a thread.

    :meth:`read` returns exactly ``n`` bytes (blocking until they are made). Each
    ``seed`` gives its own sequence, so that parallel streams do not say the same.
    """

    def __init__(self, seed: int, ahead_utterances: int = 8) -> None:
        self._rng = random.Random(seed)
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=ahead_utterances)
        self._buffer = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._make, daemon=True, name=f"babble-{seed}")
        self._thread.start()

    def _make(self) -> None:
        while not self._stop.is_set():
            pcm = utterance(self._rng)
            while not self._stop.is_set():
                try:
                    self._queue.put(pcm, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._buffer += self._queue.get()
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def close(self) -> None:
        self._stop.set()
