"""``edge devices``: the audio input devices PyAudio sees (for ``microphone.device``)."""

from __future__ import annotations

import argparse
import sys

from edge.audio.capture import list_input_devices
from edge.cli.common import EXIT_FAIL, EXIT_OK


def run(args: argparse.Namespace) -> int:
    try:
        found = list_input_devices()
    except OSError as exc:
        print(f"edge: cannot list audio devices: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if not found:
        print("no audio input devices (is the microphone plugged in? is this user in the "
              "audio group?)")
        return EXIT_FAIL
    print(f"{'INDEX':<6}{'CHANNELS':<10}{'RATE':<8}{'API':<8}NAME")
    for d in found:
        print(f"{d.index:<6}{d.max_input_channels:<10}{round(d.default_sample_rate):<8}"
              f"{d.host_api:<8}{d.name}")
    return EXIT_OK
