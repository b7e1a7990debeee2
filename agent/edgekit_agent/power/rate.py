"""Admission to inference: a token bucket and the mode's duty cycle."""

from __future__ import annotations

import threading
import time

from .policy import Mode


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; ``rate`` None = unlimited."""

    def __init__(self, rate: float | None = None, burst: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._rate, self._burst = rate, burst
        self._tokens, self._last = burst, time.monotonic()

    def set_rate(self, rate: float | None) -> None:
        with self._lock:
            self._refill()
            self._rate = rate
            self._tokens = min(self._tokens, self._burst)

    @property
    def rate(self) -> float | None:
        return self._rate

    def _refill(self) -> None:
        now = time.monotonic()
        if self._rate is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now

    def try_take(self) -> bool:
        with self._lock:
            if self._rate is None:
                return True
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def wait_s(self) -> float:
        with self._lock:
            if self._rate is None:
                return 0.0
            self._refill()
            return max(0.0, (1.0 - self._tokens) / self._rate)


class ModeGate:
    """Admission to inference under the current mode: the duty cycle window, then the token bucket."""

    def __init__(self) -> None:
        self.bucket = TokenBucket()
        self.duty, self.period_s = 1.0, 1.0

    def apply(self, mode: Mode) -> None:
        self.bucket.set_rate(mode.max_inferences_per_s)
        self.duty, self.period_s = mode.duty_cycle, mode.duty_period_s

    def duty_wait_s(self, now: float | None = None) -> float:
        if self.duty >= 1.0:
            return 0.0
        phase = (time.monotonic() if now is None else now) % self.period_s
        on = self.duty * self.period_s
        return 0.0 if phase < on else self.period_s - phase

    def try_enter(self) -> str | None:
        """None when admitted, else why not (for a 503)."""
        if self.duty_wait_s() > 0:
            return f"duty cycle {self.duty:g}: inference paused, retry in {self.duty_wait_s():.2f} s"
        if not self.bucket.try_take():
            return f"rate limit of {self.bucket.rate:g} inferences/s reached"
        return None

    def enter(self, stop: threading.Event, pacing: TokenBucket | None = None) -> bool:
        """Block until admitted (False if ``stop`` was set first)."""
        while not stop.is_set():
            wait = max(self.duty_wait_s(), self.bucket.wait_s(), pacing.wait_s() if pacing else 0.0)
            if wait > 0:
                stop.wait(min(wait, 0.05))
                continue
            if (pacing is None or pacing.try_take()) and self.bucket.try_take():
                return True
        return False
