"""What the coordinator shows of rollouts: a read-only view of `edgekit deploy`'s state.

`edgekit deploy` keeps its rollouts in ``rollouts.sqlite`` under its ``--state`` folder (see
:mod:`edgekit.fleet.deploy.state`); the coordinator reads that folder (``--rollouts DIR``) for
``/api/rollouts``, the dashboard and ``/metrics``. Each read opens the database afresh: the HTTP
server answers on many threads and a deploy process writes the file meanwhile.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from edgekit_agent.errors import ConfigError

from ..deploy.rollout import STATES
from ..deploy.state import DB_FILE, StateDB

log = logging.getLogger("edgekit.coordinator")
RECENT = 10  # rollouts shown and exported: the newest ones
MAX_FAILURES = 20  # failed devices listed per rollout (the report of `edgekit deploy` has all)


class RolloutView:
    def __init__(self, folder: Path | None, fleet: str) -> None:
        self.folder, self.fleet = folder, fleet

    def summaries(self) -> list[dict[str, Any]]:
        """The newest rollouts of this fleet, oldest first; [] when there is no state yet."""
        if self.folder is None or not (self.folder / DB_FILE).exists():
            return []
        try:
            db = StateDB(self.folder, create=False)
        except ConfigError as exc:
            log.warning("rollouts not shown: %s", exc)
            return []
        try:
            return [_summary(db, r) for r in db.rollouts(self.fleet)[-RECENT:]]
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:  # a damaged state file
            log.warning("rollouts not shown: %s: %s", db.path, exc)
            return []
        finally:
            db.close()


def _summary(db: StateDB, r: Any) -> dict[str, Any]:
    counts = db.counts(r.id)
    total_waves = db.wave_count(r.id)
    return {"rollout": r.id, "version": r.version, "bundle_id": r.bundle_id, "status": r.status,
            "halt_reason": r.halt_reason, "wave": min(r.wave + 1, total_waves),
            "waves": total_waves, "devices": sum(counts.values()),
            "states": {s: counts.get(s, 0) for s in STATES},
            "failed": db.failures(r.id, MAX_FAILURES), "created": r.created, "updated": r.updated}
