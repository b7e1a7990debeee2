"""The command replay cache, durable per signing key: a captured signed command cannot be
replayed after the agent restarts.

A command is accepted only while ``|now - ts| <= window_s`` (:data:`FRESHNESS_WINDOW_S`, 60 s:
long enough for a queued QoS-1 delivery, short enough that the cache stays small); its id is
remembered until it can no longer be fresh (``ts + window_s``). The ids live in
``<store>/replay-<key id>.json``, written (fsync + rename) *before* the command runs, so a crash
mid-command cannot make it executable again. A different fleet key starts its own file.

When more than ``capacity`` ids are fresh at once, new commands are refused rather than older
ids forgotten (forgetting would re-open them to replay).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ..errors import CommandError, StoreError
from .durable import read_json, write_json_atomic

FRESHNESS_WINDOW_S = 60.0
REPLAY_SCHEMA = "edgekit.replay/1"
DEFAULT_CAPACITY = 4096


class ReplayCache:
    """``check_and_add(id, ts)`` refuses an id seen before (in this process or an earlier one)."""

    def __init__(self, path: Path | None, window_s: float = FRESHNESS_WINDOW_S,
                 capacity: int = DEFAULT_CAPACITY) -> None:
        self.path, self.window_s, self.capacity = path, window_s, capacity
        self._lock = threading.Lock()
        self._seen: dict[str, float] = self._load()

    def _load(self) -> dict[str, float]:
        if self.path is None:
            return {}
        try:
            data = read_json(self.path) or {}
        except StoreError:
            # Unreadable: refuse every command until it expires rather than forget what ran.
            return {"*": time.time() + self.window_s}
        seen = data.get("seen")
        if not isinstance(seen, dict):
            return {}
        return {k: float(v) for k, v in seen.items()
                if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)}

    def check_and_add(self, command_id: str, ts: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._prune(now)
            if "*" in self._seen:
                raise CommandError(f"replay cache {self.path} was unreadable; commands are "
                                   f"refused for {self.window_s:g} s")
            if command_id in self._seen:
                raise CommandError(f"cmd {command_id!r} was already executed (replay)")
            if len(self._seen) >= self.capacity:
                raise CommandError(f"more than {self.capacity} commands within "
                                   f"{self.window_s:g} s; refusing until older ones expire")
            self._seen[command_id] = ts + self.window_s
            self._save()

    def _prune(self, now: float) -> None:
        for key in [k for k, expires in self._seen.items() if expires < now]:
            del self._seen[key]

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            write_json_atomic(self.path, {"schema": REPLAY_SCHEMA, "seen": self._seen})
        except StoreError as exc:
            raise CommandError(f"cannot record the command as executed ({exc}); refused") from None

    def __contains__(self, command_id: str) -> bool:
        return command_id in self._seen
