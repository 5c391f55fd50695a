"""``edge serve`` whose room recogniser raises once, mid-stream (fault injection).

The daemon is the real one (real model, real ALSA capture, real journal); only
``VoskRecognizer.accept`` is wrapped so that the ``EDGE_TEST_FAIL_AT``-th call on a
recogniser without a grammar (the room's: client sessions in the tests send phrases)
raises, once. Run as ``python tests/faults/room_recognizer_fails.py serve ...``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from edge.asr import vosk
from edge.cli import main

FAIL_AT = int(os.environ.get("EDGE_TEST_FAIL_AT", "40"))
_init = vosk.VoskRecognizer.__init__
_accept = vosk.VoskRecognizer.accept
_calls = {"room": 0, "failed": 0}


def __init__(self: Any, model: Any, sample_rate: int,
             phrases: Sequence[str] | None = None) -> None:
    _init(self, model, sample_rate, phrases)
    self.test_room = not phrases


def accept(self: Any, pcm: bytes) -> Any:
    if self.test_room and not _calls["failed"]:
        _calls["room"] += 1
        if _calls["room"] == FAIL_AT:
            _calls["failed"] = 1
            raise RuntimeError("injected fault: the room recogniser failed")
    return _accept(self, pcm)


vosk.VoskRecognizer.__init__ = __init__  # type: ignore[method-assign]
vosk.VoskRecognizer.accept = accept  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
