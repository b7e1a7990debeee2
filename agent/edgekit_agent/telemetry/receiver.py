"""Sanity for whoever reads devices' ``status``/``telemetry`` (fleet status, the coordinator).

Broker ACLs (``edgekit fleet broker-config``) are what make a message authentic; these rules
make sure that on a broker without them one forged message cannot take a device over:

- ``ts`` must be plausible: not beyond ``max_skew_s`` in the future, not older than
  ``max_age_s`` (store-and-forward replays a backlog, so "old" is days, not seconds), and a
  real Unix time at all. Rejected messages are counted, never shown.
- ``seq`` orders one device's messages (QoS 1 repeats and replays are dropped by it), but a
  forged ``seq=1e9`` must not make the device's real messages look like repeats forever:
  a jump beyond ``max_jump`` is refused outright, and a run of ``resync_after`` consecutive,
  increasing messages below the current position is taken as the device's real sequence (a
  reset: a forged high seq, or a wiped queue), so a forgery masks at most that many messages.
- A retained ``online`` that nothing live confirms goes ``stale`` after ``stale_after_s``
  (agents refresh their retained status every :data:`STATUS_REFRESH_S`), so a ghost retained
  by someone else does not show online for ever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

STATUS_REFRESH_S = 60.0  # the agent republishes its retained status this often
EARLIEST_TS = 1.5e9  # 2017-07: no device clock that is set reads earlier


@dataclass(frozen=True)
class Plausibility:
    max_skew_s: float = 300.0
    max_age_s: float = 30 * 86400.0
    max_jump: int = 1_000_000
    resync_after: int = 3
    stale_after_s: float = 3 * STATUS_REFRESH_S

    def ts_problem(self, ts: float, now: float) -> str | None:
        """Why ``ts`` cannot be believed at ``now``, or None."""
        if not math.isfinite(ts) or ts < EARLIEST_TS:
            return f"ts {ts!r} is not a plausible Unix time"
        if ts > now + self.max_skew_s:
            return f"ts is {ts - now:.3g} s in the future (allowed skew {self.max_skew_s:g} s)"
        if ts < now - self.max_age_s:
            return f"ts is {now - ts:.3g} s old (older than {self.max_age_s:g} s)"
        return None


@dataclass
class SeqTracker:
    """One device's position in its ``seq`` stream; :meth:`accept` says whether a message is new."""

    rules: Plausibility = field(default_factory=Plausibility)
    last: int | None = None
    _run: list[int] = field(default_factory=list)  # consecutive messages below ``last``

    def accept(self, seq: int) -> bool:
        if self.last is None or self.last < seq <= self.last + self.rules.max_jump:
            self.last, self._run = seq, []
            return True
        if seq > self.last:  # an absurd jump: refused, and not a reason to resync
            return False
        if self._run and seq <= self._run[-1]:
            self._run = []  # repeats and replays do not build a run
        self._run.append(seq)
        if len(self._run) >= self.rules.resync_after:
            self.last, self._run = seq, []
            return True
        return False
