"""The store-and-forward queue under MQTT telemetry.

Every outbound message is first written to :class:`Outbox`, a bounded SQLite queue (WAL, on
disk) that assigns the payload's ``seq``.

When the broker stays away the queue grows to ``max_messages``; beyond that the oldest rows
not yet handed to paho are deleted and counted, and :meth:`Outbox.take_dropped` reports the
count once (the agent puts it in the next telemetry).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .schema import encode

QOS = 1


@dataclass(frozen=True)
class Row:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """Bounded, ordered, durable queue of outbound MQTT messages; owns the ``seq`` counter."""

    def __init__(self, path: str | Path, max_messages: int = 100_000) -> None:
        if max_messages < 1:
            raise StoreError(f"queue bound must be >= 1, got {max_messages}")
        self.path, self.max_messages = Path(path), max_messages
        self._lock = threading.Lock()
        self.protect_upto = 0  # rows at or below this seq are with paho: never drop them
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a process crash loses nothing
            self._db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, topic TEXT "
                             "NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"telemetry queue {self.path}: {exc}") from None

    def put(self, topic: str, build: Callable[[int], dict[str, Any]], *, qos: int = QOS,
            retain: bool = False) -> int:
        """Assign the next ``seq``, build the payload with it and store it; returns the seq."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                seq = self._meta("last_seq") + 1
                self._db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?, ?)",
                                 (seq, topic, encode(build(seq)), qos, int(retain)))
                self._set_meta("last_seq", seq)
                self._depth += 1
                if self._depth > self.max_messages:
                    self._drop(self._depth - self.max_messages)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return seq

    def _drop(self, excess: int) -> None:
        cur = self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq > ? "
                               "ORDER BY seq LIMIT ?)", (self.protect_upto, excess))
        self._depth -= cur.rowcount
        self._set_meta("dropped_total", self._meta("dropped_total") + cur.rowcount)

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
            self._depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.Error:
            pass

    def peek(self, after: int, limit: int) -> list[Row]:
        with self._lock:
            rows = self._db.execute("SELECT seq, topic, payload, qos, retain FROM outbox WHERE seq > ? "
                                    "ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        return [Row(seq, topic, bytes(payload), qos, bool(retain)) for seq, topic, payload, qos, retain in rows]

    def ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            cur = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self._depth -= cur.rowcount

    def take_dropped(self) -> tuple[int, int]:
        """(dropped since the last call, dropped in total): each drop is reported once."""
        with self._lock:
            total, reported = self._meta("dropped_total"), self._meta("dropped_reported")
            if total != reported:
                self._set_meta("dropped_reported", total)
        return total - reported, total

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._meta("last_seq")

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                         "excluded.value", (key, value))

    def close(self) -> None:
        with self._lock:
            self._db.close()
