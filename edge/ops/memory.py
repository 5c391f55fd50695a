"""What the daemon may take of the board's RAM: systemd's limits from the budget.

Pure arithmetic (no trio, no vosk). The daemon's memory is its runtime (Python and
libraries, before the model), the model, and the recognisers, which the daemon keeps
within ``recognizer.memory_budget_mb`` (:mod:`edge.asr.memory`). The unit's
``MemoryHigh=`` is that sum plus room for audio buffers, the journal's cache and a
recogniser being replaced; ``MemoryMax=`` a quarter above it, so that the kernel
throttles and reclaims from edge first and, if it must kill, kills edge alone in its
cgroup, never another service.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.asr.budget_policy import headroom

MB = 1024 * 1024

#: Measured on the development machine (2026-12-07): ``edge serve`` before the model
#: is loaded (Python, trio, numpy, SQLite, PyAudio) and the small Korean model's share.
RUNTIME_MB = 80
MODEL_MB = 530
#: Buffers, the journal's page cache in the process, a thread's stack per worker.
SLACK_MB = 128
#: What the system needs besides edge on a Pi OS Lite board (kernel, systemd, sshd,
#: journald, the page cache that keeps the SD card usable).
SYSTEM_MB = 400

BOARDS_GB = (2, 4, 8)
#: A warm recogniser's size (``recognizer.recognizer_memory_mb``'s default).
RECOGNIZER_MB = 90


@dataclass(frozen=True)
class Limits:
    expected_mb: int  # runtime + model + budget
    high_mb: int
    max_mb: int

    def unit_lines(self) -> str:
        return f"MemoryHigh={self.high_mb}M\nMemoryMax={self.max_mb}M\n"


def limits(budget_mb: int, *, model_mb: int = MODEL_MB, runtime_mb: int = RUNTIME_MB
           ) -> Limits:
    """The unit's limits for a daemon whose recognisers are held to ``budget_mb``."""
    expected = runtime_mb + model_mb + budget_mb
    high = expected + SLACK_MB
    return Limits(expected_mb=expected, high_mb=high, max_mb=high + high // 4)


def fits(limit: Limits, mem_total_mb: int) -> bool:
    """Whether ``MemoryMax`` leaves the system its share of a board of ``mem_total_mb``."""
    return limit.max_mb + SYSTEM_MB <= mem_total_mb


def largest_budget(mem_total_mb: int, *, model_mb: int = MODEL_MB,
                   runtime_mb: int = RUNTIME_MB) -> int:
    """The largest ``memory_budget_mb`` (a multiple of 64) whose limits fit the board."""
    budget = 0
    while fits(limits(budget + 64, model_mb=model_mb, runtime_mb=runtime_mb), mem_total_mb):
        budget += 64
    return budget


def board_mem_total_mb(gb: int) -> int:
    """A Pi's ``MemTotal`` (the firmware keeps some: about 3.7 GiB of a 4 GB board)."""
    return gb * 1024 - 64 - 32 * gb


def recognizers_held(budget_mb: int, recognizer_mb: int = RECOGNIZER_MB) -> int:
    """Warm recognisers of ``recognizer_mb`` the budget holds below its high-water mark
    with nothing growing (above it, recycling starts: :mod:`edge.asr.budget_policy`)."""
    if recognizer_mb <= 0:
        return 0
    return (budget_mb - headroom(budget_mb, 0.0, 0.0, recognizer_mb)) // recognizer_mb
