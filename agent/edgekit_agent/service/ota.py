"""Over-the-air bundle updates: receive a signed offer and its chunks on the ``ota`` topic,
install through the store's verified A/B path, then watch the new bundle's health.

The flow for one rollout (messages are :func:`~edgekit_agent.telemetry.schema.parse_ota`'s)::

    offer (signed)      -> event ota_received {next_chunk}: the host sends chunks from there,
                           ``window`` at a time; after each window, event ota_progress {next_chunk}
    chunk i (hash ok)   -> appended to <store>/.ota/<sha256>-<chunk_size>.part
    last chunk          -> whole-file sha256 and size against the offer, then BundleStore.install
                           (signature, copy, self-test, atomic switch): installed / selftest_failed
                           / ota_failed
    health window       -> inference error rate (whole window) and p95 latency (last 3/4 of it,
                           at least 20 inferences) against the bundle before: health_ok, or
                           health_failed + rollback + rolled_back

Staging is resumable by (bundle sha256, next chunk): the part file only ever holds whole chunks
in order, so after a restart the next chunk is its size / chunk_size. A silent sender is asked
again with backoff. Outcomes are remembered per rollout (``.ota/done.json``) so a retained offer
seen again (reconnect, restart) re-reports the outcome instead of installing twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..bundle.reader import open_bundle
from ..bundle.signing import load_public_key
from ..config import AgentConfig
from ..errors import BundleError, EdgekitError, SignatureError, StoreError, TransportError
from ..power.policy import Mode, PolicyEngine
from ..store.durable import write_json_atomic
from ..telemetry.schema import parse_ota
from .agent import Agent

log = logging.getLogger("edgekit_agent.ota")
OTA_DIR = ".ota"
DONE_FILE = "done.json"
REMEMBER = 64  # rollout outcomes kept
STALL_S = 2.0  # no chunk for this long: ask again (doubling up to STALL_MAX_S)
STALL_MAX_S = 60.0
# The p95 after install is judged on the last 3/4 of the window, from at least this many samples
# (fewer: a single scheduling hiccup would be the p95).
SETTLE_FRACTION = 0.25
MIN_LATENCY_SAMPLES = 20
FINAL_KINDS = ("health_ok", "health_failed", "selftest_failed", "ota_failed")


class OtaHost(Protocol):
    config: AgentConfig
    _lock: Any  # the daemon's: mode application vs. commands vs. installs
    agent: Agent
    engine: PolicyEngine

    def _apply(self, mode: Mode, initial: bool = False) -> dict[str, Any]: ...

    def _event(self, kind: str, message: str, *, level: str = "info",
               data: dict[str, Any] | None = None, correlation_id: str | None = None) -> None: ...


# --- health -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class HealthGate:
    window_s: float = 0.0
    max_error_rate: float = 0.0
    max_latency_ratio: float = 2.0
    latency_slack_ms: float = 5.0

    @classmethod
    def from_offer(cls, health: dict[str, Any]) -> HealthGate:
        return cls(**{k: float(v) for k, v in health.items()})


@dataclass(frozen=True)
class HealthSample:
    count: int
    errors: int
    p95_ms: float | None


def judge(gate: HealthGate, before: HealthSample | None, after: HealthSample) -> str | None:
    """Why the bundle after install is worse than before (None: healthy). ``after`` counts the
    window only; with no inference in it there is nothing to judge."""
    runs = after.count + after.errors
    if runs and after.errors / runs > gate.max_error_rate:
        return (f"inference error rate {after.errors / runs:.3f} > {gate.max_error_rate:g} "
                f"({after.errors} of {runs} in {gate.window_s:g} s)")
    if before is None or before.p95_ms is None or after.p95_ms is None:
        return None
    limit = before.p95_ms * gate.max_latency_ratio + gate.latency_slack_ms
    if after.p95_ms > limit:
        return (f"p95 latency {after.p95_ms:.2f} ms > {limit:.2f} ms "
                f"({gate.max_latency_ratio:g} x {before.p95_ms:.2f} ms before + "
                f"{gate.latency_slack_ms:g} ms)")
    return None


# --- staging ----------------------------------------------------------------------------------

class Staging:
    """The partial bundle of one offer: whole chunks, in order, in the store's folder."""

    def __init__(self, folder: Path, offer: dict[str, Any]) -> None:
        self.sha256, self.size = offer["sha256"], offer["size"]
        self.chunk_size, self.total = offer["chunk_size"], offer["chunks"]
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{self.sha256}-{self.chunk_size}.part"
        have = self.path.stat().st_size if self.path.exists() else 0
        self.next = min(have // self.chunk_size, self.total)
        with self.path.open("ab") as f:  # a torn last write is cut back to whole chunks
            f.truncate(self.next * self.chunk_size)

    @property
    def complete(self) -> bool:
        return self.next >= self.total

    def expected_len(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def write(self, index: int, data: bytes) -> bool:
        """Append chunk ``index`` if it is the next one (True), else ignore it (a repeat)."""
        if index != self.next:
            return False
        if len(data) != self.expected_len(index):
            raise TransportError(f"ota chunk {index}: {len(data)} bytes, expected "
                                 f"{self.expected_len(index)}")
        with self.path.open("ab") as f:
            f.write(data)
            if index + 1 == self.total:
                f.flush()
        self.next += 1
        return True

    def verify(self) -> None:
        digest, size = hashlib.sha256(), 0
        with self.path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
                size += len(block)
        if size != self.size or digest.hexdigest() != self.sha256:
            self.discard()
            raise TransportError(f"received bundle is {size} bytes with sha256 "
                                 f"{digest.hexdigest()[:16]}…, the offer said {self.size} bytes, "
                                 f"{self.sha256[:16]}…")

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class _Transfer:
    offer: dict[str, Any]
    staging: Staging
    last_activity: float
    stall_s: float = STALL_S


@dataclass
class _Watch:
    offer: dict[str, Any]
    gate: HealthGate
    before: HealthSample | None
    start_count: int
    start_errors: int
    bundle_id: str
    deadline: float
    settle_at: float  # latencies before this (the install's own work in this thread) are dropped
    settled: bool = False


# --- the receiver -----------------------------------------------------------------------------

class OtaReceiver:
    """Driven by the daemon's main loop: ``tick()`` handles queued messages and timers."""

    def __init__(self, host: OtaHost, inbox: Any) -> None:
        self.host, self.inbox = host, inbox
        cfg = host.config
        self.device = cfg.device_id
        self.folder = Path(cfg.store.root) / OTA_DIR
        self._key = load_public_key(cfg.store.public_key) if cfg.store.public_key else None
        self._transfer: _Transfer | None = None
        self._watch: _Watch | None = None
        self._queued: dict[str, Any] | None = None  # an offer that came during a health window
        self.refused = 0

    def tick(self, now: float | None = None) -> None:
        """Never raises: an OTA problem is reported as an event, the agent keeps inferring."""
        try:
            self._tick(time.monotonic() if now is None else now)
        except (EdgekitError, OSError) as exc:
            log.error("ota: %s", exc)
            self._fail_current(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug must not take the agent down
            log.exception("ota crashed")
            self._fail_current(f"internal error {type(exc).__name__}: {exc}")

    def _fail_current(self, reason: str) -> None:
        current, self._transfer, self._watch = self._transfer or self._watch, None, None
        if current is not None:
            self._emit("ota_failed", current.offer, reason, level="error", final=True)

    def _tick(self, now: float) -> None:
        while True:
            try:
                raw = self.inbox.get_nowait()
            except Exception:  # queue.Empty
                break
            self._handle(raw, now)
        if self._transfer is not None and now - self._transfer.last_activity > self._transfer.stall_s:
            t = self._transfer
            t.last_activity, t.stall_s = now, min(t.stall_s * 2, STALL_MAX_S)
            self._emit("ota_progress", t.offer, f"asking again for chunk {t.staging.next}",
                       next_chunk=t.staging.next, total=t.staging.total, resumed=True)
        if self._watch is not None and not self._watch.settled and now >= self._watch.settle_at:
            self._watch.settled = True
            self.host.agent.reset_latency_window()
        if self._watch is not None and now >= self._watch.deadline:
            self._finish_watch()
            queued, self._queued = self._queued, None
            if queued is not None:
                self._on_offer(queued, now)

    def _handle(self, raw: bytes, now: float) -> None:
        try:
            msg = parse_ota(raw, self.device, self._key)
        except TransportError as exc:
            self.refused += 1
            log.warning("ota message refused: %s", exc)
            kind, rollout = _peek(raw)
            if kind == "offer" and rollout is not None:  # the host waits for an answer: say why
                self.host._event("ota_failed", f"ota offer refused: {exc}", level="error",
                                 data={"rollout": rollout})
            return
        try:
            getattr(self, f"_on_{msg['type']}")(msg, now)
        except TransportError as exc:  # a bad chunk: dropped, asked for again after a stall
            log.warning("ota %s refused: %s", msg["type"], exc)

    # -- offer / cancel --

    def _on_offer(self, offer: dict[str, Any], now: float) -> None:
        rollout = offer["rollout"]
        done = self._done().get(rollout)
        if done is not None:
            self.host._event(done["kind"], done["message"], level=done.get("level", "info"),
                             data={**done["data"], "replayed": True})
            return
        if self._watch is not None:
            if self._watch.offer["rollout"] != rollout:
                self._queued = offer  # taken up when the health window ends
            return
        t = self._transfer
        if t is not None and t.offer["rollout"] == rollout:  # offered again: resume
            t.last_activity = now
            self._emit("ota_received", offer, "offer seen again", next_chunk=t.staging.next,
                       total=t.staging.total, resumed=True)
            return
        if t is not None:  # a newer rollout replaces the one in progress
            self._transfer = None
            self._emit("ota_failed", t.offer, f"superseded by rollout {rollout}", level="warning",
                       final=True)
        refusal = self._refusal(offer)
        if refusal:
            self._emit("ota_failed", offer, refusal, level="error", final=True)
            return
        if self._active_sha256() == offer["sha256"]:  # installed before a restart: watch again
            self._start_watch(offer, None)
            return
        staging = Staging(self.folder, offer)
        self._transfer = _Transfer(offer, staging, now)
        self._emit("ota_received", offer, f"offer of {offer['name']} {offer['version']} "
                   f"({offer['size']} bytes)", next_chunk=staging.next, total=staging.total,
                   resumed=staging.next > 0)
        if staging.complete:
            self._install()

    def _refusal(self, offer: dict[str, Any]) -> str | None:
        if self.host.agent.store is None:
            return "this agent runs a bundle file, not a store: it cannot install"
        if offer["expires"] < time.time():
            return f"offer expired {time.time() - offer['expires']:.0f} s ago"
        free = shutil.disk_usage(Path(self.host.config.store.root)).free
        if free < 2 * offer["size"]:  # the part file plus the slot copy
            return f"not enough space: {offer['size']} bytes offered, {free} free"
        return None

    def _on_cancel(self, msg: dict[str, Any], now: float) -> None:
        t = self._transfer
        if t is None or t.offer["rollout"] != msg["rollout"]:
            return
        t.staging.discard()
        self._transfer = None
        self._emit("ota_failed", t.offer, f"cancelled: {msg.get('reason') or 'by the host'}",
                   level="warning", final=True)

    # -- chunks and install --

    def _on_chunk(self, chunk: dict[str, Any], now: float) -> None:
        t = self._transfer
        if t is None or chunk["rollout"] != t.offer["rollout"] or chunk["sha256"] != t.staging.sha256:
            return
        if chunk["total"] != t.staging.total or not t.staging.write(chunk["index"], chunk["data"]):
            return
        t.last_activity, t.stall_s = now, STALL_S
        nxt = t.staging.next
        if t.staging.complete:
            self._install()
        elif nxt % t.offer["window"] == 0:
            self._emit("ota_progress", t.offer, f"{nxt}/{t.staging.total} chunks", next_chunk=nxt,
                       total=t.staging.total)

    def _install(self) -> None:
        t, self._transfer = self._transfer, None
        assert t is not None
        offer, staging = t.offer, t.staging
        try:
            staging.verify()
            open_bundle(staging.path, self.host.config.store.public_key)
        except SignatureError as exc:
            staging.discard()
            self._emit("ota_failed", offer, f"signature check failed: {exc}", level="error", final=True)
            return
        except (BundleError, TransportError) as exc:
            staging.discard()
            self._emit("ota_failed", offer, f"bundle refused: {exc}", level="error", final=True)
            return
        host = self.host
        before = _sample(host.agent.stats())
        try:
            with host._lock:
                result = host.agent.store.install(  # type: ignore[union-attr]
                    staging.path, allow_downgrade=offer.get("allow_downgrade") is True)
                host.agent.reload()
                host._apply(host.engine.current)
        except StoreError as exc:
            kind = "selftest_failed" if "self-test failed" in str(exc) else "ota_failed"
            self._emit(kind, offer, str(exc), level="error", final=True)
            return
        finally:
            staging.discard()
        self._emit("installed", offer, f"installed {result.name} {result.version} in slot "
                   f"{result.slot}", install=result.to_dict())
        self._publish_status()
        self._start_watch(offer, before)

    # -- health window --

    def _start_watch(self, offer: dict[str, Any], before: HealthSample | None) -> None:
        gate = HealthGate.from_offer(offer.get("health") or {})
        s = self.host.agent.stats()
        now = time.monotonic()
        self._watch = _Watch(offer, gate, before, s["count"], s["errors"], self.host.agent.bundle_id,
                             now + gate.window_s, now + gate.window_s * SETTLE_FRACTION)

    def _finish_watch(self) -> None:
        w, self._watch = self._watch, None
        assert w is not None
        agent = self.host.agent
        s = agent.stats()
        p95 = s["latency_ms"]["p95"] if s["window"] >= MIN_LATENCY_SAMPLES else None
        after = HealthSample(s["count"] - w.start_count, s["errors"] - w.start_errors, p95)
        figures = {"before": _dump(w.before), "after": _dump(after), "window_s": w.gate.window_s}
        if agent.bundle_id != w.bundle_id:  # the store rolled back by itself (failure counting)
            reason = f"the store rolled back to {agent.bundle_id} during the health window"
            self._emit("health_failed", w.offer, reason, level="error", final=True, health=figures)
            self._emit("rolled_back", w.offer, reason, level="warning", to_bundle_id=agent.bundle_id)
            self._publish_status()
            return
        reason = judge(w.gate, w.before, after)
        if reason is None:
            self._emit("health_ok", w.offer, f"healthy after {w.gate.window_s:g} s "
                       f"({after.count} inferences)", final=True, health=figures)
            return
        with self.host._lock:
            bundle_id = agent.store.rollback(f"rollout {w.offer['rollout']}: health check failed: "  # type: ignore[union-attr]
                                             f"{reason}")
            agent.reload()
            self.host._apply(self.host.engine.current)
        self._emit("health_failed", w.offer, reason, level="error", final=True, health=figures)
        self._emit("rolled_back", w.offer, f"rolled back to {bundle_id}: {reason}", level="warning",
                   to_bundle_id=bundle_id)
        self._publish_status()

    def _publish_status(self) -> None:
        """The retained status names the running bundle: say at once that it changed."""
        telemetry = getattr(self.host, "telemetry", None)
        if telemetry is not None:
            telemetry.publish_status("online")

    # -- bookkeeping --

    def _emit(self, kind: str, offer: dict[str, Any], message: str, *, level: str = "info",
              final: bool = False, **data: Any) -> None:
        body = {"rollout": offer["rollout"], "sha256": offer.get("sha256"),
                "bundle_id": offer.get("bundle_id"), "version": offer.get("version"), **data}
        self.host._event(kind, message, level=level, data=body)
        if final:
            self._remember(offer["rollout"], {"kind": kind, "message": message, "level": level,
                                              "data": body})

    def _done(self) -> dict[str, Any]:
        try:
            done = json.loads((self.folder / DONE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return done if isinstance(done, dict) else {}

    def _remember(self, rollout: str, outcome: dict[str, Any]) -> None:
        done = self._done()
        done.pop(rollout, None)
        done[rollout] = outcome
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / DONE_FILE, dict(list(done.items())[-REMEMBER:]))

    def _active_sha256(self) -> str | None:
        store = self.host.agent.store
        slot = store.active_slot() if store is not None else None
        if slot is None:
            return None
        digest = hashlib.sha256()
        with store.slot_path(slot).open("rb") as f:  # type: ignore[union-attr]
            while block := f.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()


def _sample(stats: dict[str, Any]) -> HealthSample:
    return HealthSample(stats["count"], stats["errors"], stats["latency_ms"]["p95"])


def _dump(s: HealthSample | None) -> dict[str, Any] | None:
    return None if s is None else {"count": s.count, "errors": s.errors, "p95_ms": s.p95_ms}


def _peek(raw: bytes) -> tuple[str | None, str | None]:
    """``(type, rollout)`` of a message that failed the checks, when it has them as strings."""
    try:
        obj = json.loads(raw) if len(raw) <= 1 << 20 else None
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    kind, rollout = obj.get("type"), obj.get("rollout")
    ok = isinstance(rollout, str) and 0 < len(rollout) <= 64
    return (kind if isinstance(kind, str) else None), (rollout if ok else None)
