"""Exponential backoff with jitter (each wait drawn from the upper half of the current ceiling)."""

from __future__ import annotations

import random


class Backoff:
    """``next()`` -> seconds to wait; ``reset()`` after a success."""

    def __init__(self, initial: float = 0.2, maximum: float = 30.0, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The next wait, growing with each failure."""
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return ceiling / 2 + self._rng.random() * ceiling / 2

    def reset(self) -> None:
        """Start again from ``initial``."""
        self.attempt = 0
