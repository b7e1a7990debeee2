"""Rollout state in SQLite (``--state DIR``/rollouts.sqlite), written as it changes, so a killed
`edgekit deploy` started again resumes where it stopped and `edgekit deploy status` can read it."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent.errors import ConfigError

from .rollout import RolloutOptions

DB_FILE = "rollouts.sqlite"
RUNNING, HALTED, DONE, CANCELLED = "running", "halted", "done", "cancelled"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, fleet TEXT NOT NULL, bundle_path TEXT NOT NULL, sha256 TEXT NOT NULL,
    bundle_id TEXT NOT NULL, version TEXT NOT NULL, options TEXT NOT NULL, status TEXT NOT NULL,
    wave INTEGER NOT NULL DEFAULT 0, halt_reason TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    rollout TEXT NOT NULL, device TEXT NOT NULL, wave INTEGER NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', offered_at REAL, finished_at REAL,
    PRIMARY KEY (rollout, device));
"""


def default_state_dir() -> Path:
    base = os.environ.get("EDGEKIT_CACHE_DIR") or Path.home() / ".cache" / "edgekit"
    return Path(base) / "deploy"


@dataclass(frozen=True)
class Rollout:
    id: str
    fleet: str
    bundle_path: str
    sha256: str
    bundle_id: str
    version: str
    options: RolloutOptions
    status: str
    wave: int
    halt_reason: str
    created: float
    updated: float


@dataclass(frozen=True)
class DeviceRow:
    device: str
    wave: int
    state: str
    reason: str
    offered_at: float | None
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "wave": self.wave, "state": self.state, "reason": self.reason}


class StateDB:
    def __init__(self, folder: Path, *, create: bool = True) -> None:
        self.path = Path(folder) / DB_FILE
        if not create and not self.path.exists():
            raise ConfigError("no rollout state here", key="--state", value=str(folder))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the rollout state: {exc}", key="--state",
                              value=str(folder)) from None

    def close(self) -> None:
        self._db.close()

    # -- rollouts --

    def create(self, fleet: str, bundle_path: str, sha256: str, bundle_id: str, version: str,
               options: RolloutOptions, waves: list[list[str]]) -> Rollout:
        rid = f"r{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO rollouts VALUES (?,?,?,?,?,?,?,?,0,'',?,?)",
                             (rid, fleet, bundle_path, sha256, bundle_id, version,
                              json.dumps(options.to_dict()), RUNNING, now, now))
            self._db.executemany("INSERT INTO devices (rollout, device, wave, state) VALUES (?,?,?,?)",
                                 [(rid, d, i, "pending") for i, wave in enumerate(waves) for d in wave])
        return self.get(rid)

    def get(self, rid: str) -> Rollout:
        row = self._db.execute("SELECT * FROM rollouts WHERE id = ?", (rid,)).fetchone()
        if row is None:
            raise ConfigError("no such rollout", key="--rollout", value=rid)
        return _rollout(row)

    def rollouts(self, fleet: str | None = None, status: str | None = None) -> list[Rollout]:
        sql, args = "SELECT * FROM rollouts WHERE 1=1", []
        if fleet is not None:
            sql, args = sql + " AND fleet = ?", [*args, fleet]
        if status is not None:
            sql, args = sql + " AND status = ?", [*args, status]
        return [_rollout(r) for r in self._db.execute(sql + " ORDER BY created", args)]

    def update(self, rid: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(f"UPDATE rollouts SET {cols}, updated = ? WHERE id = ?",
                         (*fields.values(), time.time(), rid))

    # -- devices --

    def devices(self, rid: str) -> list[DeviceRow]:
        rows = self._db.execute("SELECT device, wave, state, reason, offered_at, finished_at "
                                "FROM devices WHERE rollout = ? ORDER BY wave, device", (rid,))
        return [DeviceRow(*r) for r in rows]

    def counts(self, rid: str) -> dict[str, int]:
        """The rollout's devices by state."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM devices WHERE rollout = ? "
                                "GROUP BY state", (rid,))
        return dict(rows.fetchall())

    def wave_count(self, rid: str) -> int:
        row = self._db.execute("SELECT MAX(wave) FROM devices WHERE rollout = ?", (rid,)).fetchone()
        return 0 if row[0] is None else row[0] + 1

    def failures(self, rid: str, limit: int) -> list[dict[str, str]]:
        rows = self._db.execute("SELECT device, reason FROM devices WHERE rollout = ? AND state = ? "
                                "ORDER BY device LIMIT ?", (rid, "failed", limit))
        return [{"device": d, "reason": r} for d, r in rows]

    def set_device(self, rid: str, device: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(f"UPDATE devices SET {cols} WHERE rollout = ? AND device = ?",
                         (*fields.values(), rid, device))


def _rollout(row: tuple[Any, ...]) -> Rollout:
    (rid, fleet, path, sha, bid, version, options, status, wave, halt_reason, created,
     updated) = row
    return Rollout(rid, fleet, path, sha, bid, version, RolloutOptions.from_dict(json.loads(options)),
                   status, wave, halt_reason, created, updated)
