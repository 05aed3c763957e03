"""Step notation for training lengths and rewind points: ``40ep``, ``500it``, ``2ep100it``."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERN = re.compile(r"^(?:(\d+)ep)?(?:(\d+)it)?$")


@dataclass(frozen=True)
class Step:
    """A point in training given as whole epochs plus iterations."""

    ep: int = 0
    it: int = 0

    @classmethod
    def parse(cls, text: str | int) -> "Step":
        if isinstance(text, int) and not isinstance(text, bool):
            if text < 0:
                raise ValueError(f"negative step {text}")
            return cls(0, text)
        match = _PATTERN.match(str(text).strip())
        if not match or not str(text).strip():
            raise ValueError(f"{text!r} is not step notation (e.g. '40ep', '500it', '2ep100it')")
        return cls(int(match.group(1) or 0), int(match.group(2) or 0))

    def iterations(self, steps_per_epoch: int) -> int:
        return self.ep * steps_per_epoch + self.it

    def __str__(self) -> str:
        if self.ep and self.it:
            return f"{self.ep}ep{self.it}it"
        return f"{self.ep}ep" if self.ep else f"{self.it}it"


def iterations_per_epoch(examples: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped); at least one."""
    return max(examples // batch_size, 1)
