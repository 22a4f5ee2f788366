"""The retention policy's settings (retention.py applies them), apart from the code that needs
PostgreSQL: the command line reads this in every image, most of which have no psycopg."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    days: float = 0.0  # 0: no limit
    gb: float = 0.0

    @property
    def active(self) -> bool:
        return self.days > 0 or self.gb > 0
