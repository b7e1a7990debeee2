"""The on-device bundle store: two slots, an atomic pointer, self-tests and automatic rollback.

Layout under ``root``::

    slots/a/bundle.ekb     one verified bundle per slot
    slots/b/bundle.ekb
    state.json             {"active": "a", "previous": "b", "bad": [...], "last": {...}}
    health.json            failures of the active bundle and the run in progress (crash counting)
    .lock                  flock held by install / rollback / failure bookkeeping

Install copies the bundle to a temporary file in the inactive slot (fsync), verifies that copy
and self-tests it there; only then is the slot dropped from ``previous``, the copy renamed into
place and ``state.json`` switched. Every state change is a write to a temporary file, fsync,
``os.replace`` and an fsync of the folder, so a power cut at any instant leaves either the old
or the new ``state.json``, and it only ever names slots whose bundles were completely written,
verified and self-tested. A refused install changes nothing.

Self-tests are :mod:`.selftest`; the crash-safe file writes are :mod:`.durable`.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..bundle.manifest import MAX_SECURITY_VERSION, bundle_id
from ..bundle.reader import Bundle, open_bundle
from ..errors import BundleError, EdgekitError, SignatureError, StoreError
from ..validate import NUMBER, Table, has_kind
from .durable import checkpoint, copy_durably, pid_alive, place, read_json, write_json_atomic
from .selftest import SelfTestResult, needs_isolation, run_selftest, run_selftest_isolated

SLOTS = ("a", "b")
BUNDLE_FILE = "bundle.ekb"
STATE_FILE = "state.json"
HEALTH_FILE = "health.json"
STATE_SCHEMA = "edgekit.store/1"
INSTALL_STEPS = ("verified", "copying", "copied", "selftested", "released", "placed",
                 "pointer-written", "switched")

EventSink = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class InstallResult:
    bundle_id: str
    name: str
    version: str
    slot: str
    previous_bundle_id: str | None
    signature_checked: bool
    key_id: str
    selftest: SelfTestResult
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "selftest": self.selftest.to_dict()}


@dataclass(frozen=True)
class SlotStatus:
    slot: str
    bundle_id: str | None
    name: str | None
    version: str | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StoreStatus:
    root: str
    active: SlotStatus | None
    previous: SlotStatus | None
    recent_failures: int
    max_failures: int
    failure_window_s: float
    last_event: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active.to_dict() if self.active else None,
                "previous": self.previous.to_dict() if self.previous else None}


class BundleStore:
    def __init__(self, root: str | Path, *, public_key: str | Path | None = None,
                 max_failures: int = 3, failure_window_s: float = 600.0,
                 on_event: EventSink | None = None) -> None:
        self.root = Path(root)
        self.public_key = public_key
        self.max_failures = max_failures
        self.failure_window_s = failure_window_s
        self.on_event = on_event

    def _create(self) -> None:
        """Only an install creates the folders; reading a mistyped path must not."""
        try:
            for slot in SLOTS:
                (self.root / "slots" / slot).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the bundle store at {self.root}: "
                             f"{exc.strerror or exc}") from None

    # --- reading --------------------------------------------------------------------------

    def slot_path(self, slot: str) -> Path:
        return self.root / "slots" / slot / BUNDLE_FILE

    def active_slot(self) -> str | None:
        return self._state()["active"]

    def previous_slot(self) -> str | None:
        return self._state()["previous"]

    def active(self, public_key: str | Path | None = None) -> Bundle:
        """The active bundle, fully re-verified (hashes, and the signature when a key is set)."""
        slot = self.active_slot()
        if slot is None:
            raise StoreError(f"{self.root}: no bundle installed")
        return self._open_slot(slot, public_key)

    def previous(self, public_key: str | Path | None = None) -> Bundle | None:
        slot = self._state()["previous"]
        return None if slot is None else self._open_slot(slot, public_key)

    def status(self) -> StoreStatus:
        state = self._state()
        return StoreStatus(root=str(self.root), active=self._slot_status(state["active"]),
                           previous=self._slot_status(state["previous"]),
                           recent_failures=len(self._recent_failures(self._health())),
                           max_failures=self.max_failures, failure_window_s=self.failure_window_s,
                           last_event=dict(state.get("last") or {}))

    def _open_slot(self, slot: str, public_key: str | Path | None) -> Bundle:
        key = public_key if public_key is not None else self.public_key
        try:
            return open_bundle(self.slot_path(slot), key)
        except BundleError as exc:
            raise StoreError(f"slot {slot}: {exc}") from None

    def _slot_status(self, slot: str | None) -> SlotStatus | None:
        if slot is None:
            return None
        try:
            m = self._open_slot(slot, None).manifest
        except StoreError as exc:
            return SlotStatus(slot, None, None, None, error=str(exc))
        return SlotStatus(slot, bundle_id(m), m.name, m.version)

    # --- install --------------------------------------------------------------------------

    def install(self, bundle_path: str | Path, public_key: str | Path | None = None, *,
                allow_downgrade: bool = False) -> InstallResult:
        """Verify, copy to the inactive slot, self-test, switch. Any refusal leaves the store as it was.

        A bundle whose ``security_version`` is below the highest this store has installed is
        refused unless ``allow_downgrade`` (the operator's explicit word, kept in the event)."""
        t0 = time.monotonic()
        key = public_key if public_key is not None else self.public_key
        source = _verify_source(Path(bundle_path), key)
        new_id = bundle_id(source.manifest)
        checkpoint("verified")
        self._create()
        with self._locked():
            self._remove_temporaries()
            state = self._state()
            downgrade = _check_counter(source.manifest.counter, state["security_version"],
                                       allow_downgrade)
            old_active = state["active"]
            target = "b" if old_active == "a" else "a"
            staged = copy_durably(source.path, self.slot_path(target))
            checkpoint("copied")
            try:
                installed = self._verify_copy(staged, key, source)
                selftest = self._selftest_or_refuse(installed)
            except StoreError:
                staged.unlink(missing_ok=True)
                raise
            checkpoint("selftested")
            if state["previous"] == target:  # its bundle is about to be replaced
                self._write_state({**state, "previous": None})
            checkpoint("released")
            place(staged, self.slot_path(target))
            checkpoint("placed")
            previous_id = self._slot_status(old_active).bundle_id if old_active else None
            event = {"event": "install", "bundle_id": new_id, "version": installed.manifest.version,
                     "security_version": installed.manifest.counter, "slot": target,
                     "previous_bundle_id": previous_id, "time": time.time(), **downgrade}
            self._write_state({"active": target, "previous": old_active,
                               "bad": [b for b in state["bad"] if b != new_id], "last": event,
                               "security_version": max(state["security_version"],
                                                       installed.manifest.counter)},
                              hook="pointer-written")
            checkpoint("switched")
            self._reset_health(new_id)
        self._emit("install", event)
        m = installed.manifest
        return InstallResult(bundle_id=new_id, name=m.name, version=m.version, slot=target,
                             previous_bundle_id=previous_id,
                             signature_checked=installed.signature_checked, key_id=installed.key_id,
                             selftest=selftest, seconds=time.monotonic() - t0)

    def _verify_copy(self, staged: Path, key: str | Path | None, source: Bundle) -> Bundle:
        try:
            installed = open_bundle(staged, key)
        except BundleError as exc:
            raise StoreError(f"the copy in the store does not verify ({exc}); "
                             "previous bundle stays active") from None
        if installed.manifest != source.manifest:
            raise StoreError(f"{source.path} changed while it was being installed; "
                             "previous bundle stays active")
        return installed

    def _selftest_or_refuse(self, bundle: Bundle) -> SelfTestResult:
        try:
            return run_selftest_isolated(bundle) if needs_isolation(bundle) else run_selftest(bundle)
        except EdgekitError as exc:
            raise StoreError(f"self-test failed, previous bundle stays active: {exc}") from None

    # --- rollback and crash counting ------------------------------------------------------

    def rollback(self, reason: str = "manual", *, automatic: bool = False) -> str:
        """Make the previous slot active (the current one becomes previous). Returns the bundle id."""
        with self._locked():
            return self._rollback_locked(reason, automatic)

    def _rollback_locked(self, reason: str, automatic: bool) -> str:
        state = self._state()
        if state["previous"] is None:
            raise StoreError(f"{self.root}: no previous bundle to roll back to")
        target = self._open_slot(state["previous"], None)
        target_id = bundle_id(target.manifest)
        if automatic and target_id in state["bad"]:
            raise StoreError(f"previous bundle {target_id} failed before; not rolling back to it")
        from_status = self._slot_status(state["active"])
        from_id = from_status.bundle_id if from_status else None
        bad = list(state["bad"]) + ([from_id] if automatic and from_id else [])
        event = {"event": "rollback", "bundle_id": target_id, "version": target.manifest.version,
                 "from_bundle_id": from_id, "reason": reason, "automatic": automatic,
                 "time": time.time()}
        self._write_state({"active": state["previous"], "previous": state["active"],
                           "bad": bad[-16:], "last": event,
                           "security_version": state["security_version"]})
        self._reset_health(target_id)
        self._emit("rollback", event)
        return target_id

    def record_failure(self, reason: str) -> bool:
        """Count one error/crash of the active bundle; True when this triggered a rollback."""
        with self._locked():
            health = self._health()
            health["failures"] = self._recent_failures(health) + [time.time()]
            self._write_health(health)
            if len(health["failures"]) < self.max_failures or self._state()["previous"] is None:
                return False
            why = (f"{len(health['failures'])} failures within {self.failure_window_s:g} s; "
                   f"last: {reason}")
            try:
                self._rollback_locked(why, automatic=True)
            except StoreError:
                return False
            return True

    def note_start(self) -> bool:
        """Mark a run of the active bundle as started. A previous run that ended without
        ``note_stop`` (SIGKILL, segfault, power cut) counts as a failure. True if that rolled back."""
        crashed = None
        with self._locked():
            health = self._health()
            running = health.get("running")
            if running and running.get("pid") != os.getpid() and not pid_alive(running.get("pid")):
                crashed = running
            health["running"] = {"pid": os.getpid(), "since": time.time()}
            self._write_health(health)
        if crashed is None:
            return False
        return self.record_failure(f"previous run (pid {crashed.get('pid')}) ended without a clean stop")

    def note_stop(self) -> None:
        with self._locked():
            health = self._health()
            running = health.get("running")
            if running and running.get("pid") == os.getpid():
                health["running"] = None
                self._write_health(health)

    def _recent_failures(self, health: dict[str, Any]) -> list[float]:
        horizon = time.time() - self.failure_window_s
        return [t for t in health.get("failures", []) if has_kind(t, NUMBER) and t >= horizon]

    # --- files ----------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.root.is_dir():
            raise StoreError(f"{self.root}: no bundle store here (nothing was ever installed)")
        try:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot lock the store {self.root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _state(self) -> dict[str, Any]:
        """state.json, typed. A wrong slot pointer or counter is a one-line StoreError (nothing
        is guessed for those); the bookkeeping fields ``bad``/``last`` are dropped when mistyped."""
        path = self.root / STATE_FILE
        state = read_json(path) or {}
        t = Table(state, str(path), error=StoreError)
        active, previous = t.choice("active", SLOTS, None), t.choice("previous", SLOTS, None)
        if previous == active:
            previous = None
        counter = t.integer("security_version", 0, lo=0, hi=MAX_SECURITY_VERSION)
        bad = state.get("bad") if isinstance(state.get("bad"), list) else []
        last = state.get("last") if isinstance(state.get("last"), dict) else None
        return {"active": active, "previous": previous, "bad": [b for b in bad if isinstance(b, str)],
                "last": last, "security_version": counter}

    def _write_state(self, state: dict[str, Any], hook: str | None = None) -> None:
        write_json_atomic(self.root / STATE_FILE, {"schema": STATE_SCHEMA, **state}, hook=hook)

    def _health(self) -> dict[str, Any]:
        """health.json is crash-counting bookkeeping: mistyped fields are reset, never fatal."""
        try:
            health = read_json(self.root / HEALTH_FILE) or {}
        except StoreError:
            health = {}
        if not isinstance(health.get("failures"), list):
            health["failures"] = []
        running = health.get("running")
        if not isinstance(running, dict) or not isinstance(running.get("pid"), int):
            health["running"] = None
        return health

    def _write_health(self, health: dict[str, Any]) -> None:
        write_json_atomic(self.root / HEALTH_FILE, health)

    def _reset_health(self, new_bundle_id: str) -> None:
        """Failures belong to the bundle that had them; a run in progress stays tracked."""
        running = self._health().get("running")
        self._write_health({"bundle_id": new_bundle_id, "failures": [], "running": running})

    def _remove_temporaries(self) -> None:
        """Leftovers of an install that was cut off (never referenced by state.json)."""
        for tmp in [*self.root.glob(".*.tmp"), *self.root.glob("slots/*/.*.tmp")]:
            tmp.unlink(missing_ok=True)

    def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, payload)


def _verify_source(path: Path, key: str | Path | None) -> Bundle:
    """The bundle, fully validated (manifest, hashes, signature, every model) before any slot
    is touched."""
    try:
        bundle = open_bundle(path, key)
        for variant in bundle.manifest.all_variants:
            bundle.read_runnable_model(variant.name)
        bundle_id(bundle.manifest)
        return bundle
    except SignatureError as exc:
        raise StoreError(f"signature check failed, previous bundle stays active: {exc}") from None
    except BundleError as exc:
        raise StoreError(f"bundle refused, previous bundle stays active: {exc}") from None
    except ValueError as exc:  # canonical JSON: cannot happen after the strict parse; defence
        raise StoreError(f"bundle refused, manifest is not canonical JSON: {exc}") from None


def _check_counter(new: int, highest: int, allow_downgrade: bool) -> dict[str, Any]:
    """Anti-rollback: what the install event records, or a StoreError for a refused downgrade."""
    if new >= highest:
        return {}
    if not allow_downgrade:
        raise StoreError(f"bundle security_version {new} is below {highest}, the highest this "
                         "device has installed: refusing a downgrade (an operator can override "
                         "with --allow-downgrade); previous bundle stays active")
    return {"downgrade": {"from_security_version": highest, "to_security_version": new,
                          "allowed_by": "allow_downgrade"}}
