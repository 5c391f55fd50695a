"""What ``edge check`` says: a finding per check, at one of three levels. Pure."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Finding:
    level: str  # OK, WARN or FAIL
    topic: str
    message: str

    def line(self) -> str:
        return f"{self.level:<4} {self.topic}: {self.message}"
