"""The rollout loop: offers wave after wave, serves chunks, judges outcomes, halts and rolls back.

One paho client (from :func:`edgekit.fleet.broker.connect`) subscribes to the fleet's ``status``
and ``event`` topics; its thread only queues messages, the loop here does the rest. Every change
is written to :class:`~.state.StateDB` first, so a restarted `edgekit deploy` resumes: devices
that finished stay finished, devices that were offered are offered again (a device that already
finished answers with its remembered outcome).

Offers are retained, so a device that is offline when its wave starts gets the offer when it
connects again; it does not block its wave and is not counted until it reports. A device that
was offered and reports nothing within ``timeout_s`` fails ("timed out") and is told to cancel.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from edgekit_agent.errors import TransportError
from edgekit_agent.telemetry import schema

from . import transfer
from .rollout import (
    DEFERRED,
    FAILED,
    FINISHED,
    OFFERED,
    PENDING,
    ROLLED_BACK,
    SKIPPED,
    SUCCEEDED,
    decide,
)
from .state import CANCELLED, DONE, HALTED, RUNNING, Rollout, StateDB

log = logging.getLogger("edgekit.deploy")
SETTLE_S = 1.0  # retained statuses arrive right after subscribing; collect them this long
TICK_S = 0.05
ROLLBACK_WAIT_S = 30.0
CHECK_S = 1.0  # how often the loop re-reads its rollout's status from the state
FAILURE_KINDS = ("ota_failed", "selftest_failed", "health_failed")


@dataclass
class Fleet:
    """What the broker says about the fleet's devices: their latest ``status`` payloads."""

    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)

    def online(self, device: str) -> bool:
        return (self.statuses.get(device) or {}).get("state") == "online"


def gather(client_queue: queue.Queue, fleet: Fleet, seconds: float) -> None:
    """Collect the retained statuses that arrive after subscribing."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            topic, payload = client_queue.get(timeout=left)
        except queue.Empty:
            return
        _note_status(fleet, topic, payload)


def _note_status(fleet: Fleet, topic: str, payload: bytes) -> str | None:
    try:
        _, device, kind = schema.parse_topic(topic)
        if kind != "status" or not payload:
            return None
        fleet.statuses[device] = schema.decode(payload, "status")
    except TransportError:
        return None
    return device


class Deployer:
    def __init__(self, db: StateDB, rollout: Rollout, bundle: transfer.BundleFile, key: Any,
                 client: Any, inbox: queue.Queue, fleet: Fleet, *, progress: bool = True) -> None:
        self.db, self.r, self.bundle, self.key = db, rollout, bundle, key
        self.client, self.inbox, self.fleet = client, inbox, fleet
        self.opts = rollout.options
        self.rows = {d.device: d for d in db.devices(rollout.id)}
        self.waves = max((d.wave for d in self.rows.values()), default=-1) + 1
        self._rollbacks: dict[str, str] = {}  # command id -> device
        self._progress = progress

    # -- the loop --

    def run(self, wait: bool) -> None:
        self._reoffer()
        checked = time.monotonic()
        while self.r.status == RUNNING:
            self._pump(TICK_S)
            if time.monotonic() - checked > CHECK_S:  # `edgekit deploy cancel` from elsewhere
                checked = time.monotonic()
                self.r = self.db.get(self.r.id)
                if self.r.status != RUNNING:
                    self._say(f"rollout is {self.r.status} ({self.r.halt_reason})")
                    break
            self._check_timeouts()
            if self.r.wave < self.waves:
                self._advance()
            elif not self._offered() and (not wait or not self._deferred()):
                break
        if self.r.status == RUNNING and all(d.state in FINISHED + (SKIPPED,)
                                            for d in self.rows.values()):
            self._set_rollout(status=DONE)

    def _advance(self) -> None:
        wave = [d for d in self.rows.values() if d.wave == self.r.wave]
        if any(d.state == PENDING for d in wave):
            self._start_wave(wave)
        if any(d.state == OFFERED for d in self._wave_rows()):
            return
        decision = decide([d.state for d in self.rows.values()], self.opts.max_failure_rate,
                          self.opts.min_devices)
        self._say(f"wave {self.r.wave + 1}/{self.waves} done: {decision.failed} failed of "
                  f"{decision.finished} finished so far")
        if decision.halt:
            self._halt(decision.reason)
        else:
            self._set_rollout(wave=self.r.wave + 1)

    def _wave_rows(self) -> list[Any]:
        return [d for d in self.rows.values() if d.wave == self.r.wave]

    def _start_wave(self, wave: list[Any]) -> None:
        self._say(f"wave {self.r.wave + 1}/{self.waves}: {', '.join(d.device for d in wave)}")
        for d in wave:  # also devices whose status says they run it: a status can be stale
            if d.state != PENDING:
                continue
            self._offer(d.device)
            self._set(d.device, OFFERED if self.fleet.online(d.device) else DEFERRED,
                      "" if self.fleet.online(d.device) else "offline: offered when it returns",
                      offered_at=time.time())

    def _reoffer(self) -> None:
        """After a restart: devices that were offered get the offer again (a resume)."""
        for d in self.rows.values():
            if d.state in (OFFERED, DEFERRED):
                self._offer(d.device)
                if d.state == OFFERED:
                    self._set(d.device, OFFERED, d.reason, offered_at=time.time())

    # -- messages --

    def _pump(self, timeout: float) -> None:
        try:
            topic, payload = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle(topic, payload)
            try:
                topic, payload = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, topic: str, payload: bytes) -> None:
        device = _note_status(self.fleet, topic, payload)
        if device is not None:
            self._on_status(device)
            return
        try:
            _, device, kind = schema.parse_topic(topic)
            if kind != "event" or device not in self.rows:
                return
            event = schema.decode(payload, "event")
        except TransportError:
            return
        if event.get("correlation_id") in self._rollbacks:
            self._on_rollback_answer(event)
        elif (event.get("data") or {}).get("rollout") == self.r.id:
            self._on_event(device, event)

    def _on_status(self, device: str) -> None:
        row = self.rows.get(device)
        if row is None:
            return
        if row.state == DEFERRED and self.fleet.online(device):
            self._say(f"{device} is back online")
            self._set(device, OFFERED, "", offered_at=time.time())
        elif row.state == OFFERED and not self.fleet.online(device):
            self._set(device, DEFERRED, "went offline: continues when it returns")

    def _on_event(self, device: str, event: dict[str, Any]) -> None:
        row, kind, data = self.rows[device], event["kind"], event["data"]
        if row.state not in (OFFERED, DEFERRED):
            return  # finished already (QoS 1 repeats, replayed outcomes)
        if kind in ("ota_received", "ota_progress"):
            if row.state == DEFERRED:
                self._set(device, OFFERED, "", offered_at=time.time())
            self._send_chunks(device, data.get("next_chunk"))
        elif kind == "installed":
            self._say(f"{device}: installed, health window {self.opts.health_s:g} s")
        elif kind == "health_ok":
            self._finish(device, SUCCEEDED, "")
        elif kind in FAILURE_KINDS:
            self._finish(device, FAILED, f"{kind}: {event['message']}")

    def _send_chunks(self, device: str, first: Any) -> None:
        total = self.bundle.chunks(self.opts.chunk_size)
        if not isinstance(first, int) or isinstance(first, bool) or not 0 <= first <= total:
            return
        topic = schema.Topics(self.r.fleet, device).ota
        for i in range(first, min(first + self.opts.window, total)):
            self.client.publish(topic, transfer.chunk(device, self.r.id, self.bundle, i,
                                                      self.opts.chunk_size), qos=1)

    # -- outcomes --

    def _finish(self, device: str, state: str, reason: str) -> None:
        self._say(f"{device}: {state}{' - ' + reason if reason else ''}")
        self._set(device, state, reason, finished_at=time.time())
        self._clear_offer(device)

    def _check_timeouts(self) -> None:
        now = time.time()
        for d in list(self.rows.values()):
            if d.state == OFFERED and d.offered_at and now - d.offered_at > self.opts.timeout_s:
                self._cancel(device=d.device, reason=f"timed out after {self.opts.timeout_s:g} s")
                self._finish(d.device, FAILED, f"timed out after {self.opts.timeout_s:g} s "
                                               "without an outcome")

    def _halt(self, reason: str) -> None:
        self._say(f"halting: {reason}")
        self._set_rollout(status=HALTED, halt_reason=reason)
        for d in list(self.rows.values()):
            if d.state in (PENDING, OFFERED, DEFERRED):
                if d.state != PENDING:
                    self._cancel(d.device, f"rollout halted: {reason}")
                    self._clear_offer(d.device)
                self._set(d.device, SKIPPED, "never installed: rollout halted")
        self._roll_back([d.device for d in self._wave_rows() if d.state == SUCCEEDED], reason)

    def _roll_back(self, devices: list[str], reason: str) -> None:
        for device in devices:
            cid = uuid.uuid4().hex
            self._rollbacks[cid] = device
            cmd = schema.sign_command(self.key, device, "rollback", seq=int(time.time() * 1000),
                                      command_id=cid)
            self.client.publish(schema.Topics(self.r.fleet, device).cmd, cmd, qos=1)
        deadline = time.monotonic() + ROLLBACK_WAIT_S
        while self._rollbacks and time.monotonic() < deadline:
            self._pump(TICK_S)
        for device in self._rollbacks.values():
            self._set(device, FAILED, "rollback command got no answer: state unknown")

    def _on_rollback_answer(self, event: dict[str, Any]) -> None:
        device = self._rollbacks.pop(event["correlation_id"])
        if event["kind"] == "cmd_result":
            self._say(f"{device}: rolled back")
            self._set(device, ROLLED_BACK, f"rolled back: rollout halted ({self.r.halt_reason})")
        elif event["kind"] == "cmd_error":
            self._set(device, FAILED, f"rollback refused: {event['message']}")
        else:
            self._rollbacks[event["correlation_id"]] = device

    # -- publishing and bookkeeping --

    def _offer(self, device: str) -> None:
        payload = transfer.offer(self.key, device, self.r.id, self.bundle,
                                 chunk_size=self.opts.chunk_size, window=self.opts.window,
                                 health=self.opts.health(),
                                 allow_downgrade=self.opts.allow_downgrade)
        self.client.publish(schema.Topics(self.r.fleet, device).ota, payload, qos=1, retain=True)

    def _clear_offer(self, device: str) -> None:
        self.client.publish(schema.Topics(self.r.fleet, device).ota, b"", qos=1, retain=True)

    def _cancel(self, device: str, reason: str) -> None:
        self.client.publish(schema.Topics(self.r.fleet, device).ota,
                            transfer.cancel(self.key, device, self.r.id, reason), qos=1)

    def _offered(self) -> list[str]:
        return [d.device for d in self.rows.values() if d.state == OFFERED]

    def _deferred(self) -> list[str]:
        return [d.device for d in self.rows.values() if d.state == DEFERRED]

    def _set(self, device: str, state: str, reason: str, **times: float) -> None:
        self.db.set_device(self.r.id, device, state=state, reason=reason, **times)
        row = self.rows[device]
        self.rows[device] = row.__class__(device, row.wave, state, reason,
                                          times.get("offered_at", row.offered_at),
                                          times.get("finished_at", row.finished_at))

    def _set_rollout(self, **fields: Any) -> None:
        self.db.update(self.r.id, **fields)
        self.r = self.db.get(self.r.id)

    def _say(self, text: str) -> None:
        if self._progress:
            print(f"[{self.r.id}] {text}", file=sys.stderr, flush=True)


def cancel_rollout(db: StateDB, rollout: Rollout, client: Any, key: Any | None) -> list[str]:
    """Mark a rollout cancelled; clear its retained offers (and tell devices, with a key)."""
    touched = []
    for d in db.devices(rollout.id):
        if d.state in (PENDING, OFFERED, DEFERRED):
            if d.state != PENDING:
                topic = schema.Topics(rollout.fleet, d.device).ota
                client.publish(topic, b"", qos=1, retain=True)
                if key is not None:
                    client.publish(topic, transfer.cancel(key, d.device, rollout.id, "cancelled"), qos=1)
                touched.append(d.device)
            db.set_device(rollout.id, d.device, state=SKIPPED, reason="rollout cancelled")
    db.update(rollout.id, status=CANCELLED, halt_reason="cancelled by the operator")
    return touched


def report(db: StateDB, rollout: Rollout) -> dict[str, Any]:
    """The `--json` summary: devices, succeeded, failed [{device, reason}], halted, rolled_back, waves."""
    rollout = db.get(rollout.id)
    rows = db.devices(rollout.id)
    waves = []
    for i in sorted({d.wave for d in rows}):
        members = [d for d in rows if d.wave == i]
        waves.append({"wave": i + 1, "percent": _percent(i, rows),
                      "devices": [d.device for d in members], "reached": i <= rollout.wave,
                      "succeeded": sum(d.state == SUCCEEDED for d in members),
                      "failed": sum(d.state == FAILED for d in members),
                      "rolled_back": sum(d.state == ROLLED_BACK for d in members)})
    undone = [d.device for d in rows if d.state == ROLLED_BACK or d.reason.startswith("health_failed")]
    return {"rollout": rollout.id, "fleet": rollout.fleet, "bundle": rollout.bundle_path,
            "bundle_id": rollout.bundle_id, "version": rollout.version, "status": rollout.status,
            "devices": [d.device for d in rows],
            "succeeded": [d.device for d in rows if d.state == SUCCEEDED],
            "failed": [{"device": d.device, "reason": d.reason} for d in rows if d.state == FAILED],
            "pending": [d.device for d in rows if d.state in (PENDING, OFFERED, DEFERRED)],
            "skipped": [d.device for d in rows if d.state == SKIPPED],
            "halted": rollout.status == HALTED, "halt_reason": rollout.halt_reason,
            "rolled_back": undone,
            "waves": waves}


def _percent(index: int, rows: list[Any]) -> float:
    """The share of the selected devices reached by the end of wave ``index`` (cumulative)."""
    return round(100.0 * sum(d.wave <= index for d in rows) / max(len(rows), 1), 1)
