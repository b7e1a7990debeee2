"""MQTT topics and payloads: the one definition the agent, coordinator and fleet CLI share.

Topics: ``edgekit/v1/<fleet>/<device>/<kind>`` with kind one of :data:`KINDS`.

Payloads are UTF-8 JSON objects. Every one carries ``schema`` (``edgekit.<kind>/1``),
``device``, ``seq`` and ``ts`` (Unix seconds, when it was produced):

- ``seq`` numbers every message a device queues (all topics share one counter), starting at 1
  and never reused, also across restarts. QoS 1 is at-least-once: receivers drop duplicates by
  ``seq``. Gaps mean messages dropped by the bounded queue (counted in telemetry ``queue``).
  The last-will ``status`` is composed before the fact, so it carries ``seq`` 0 and ``will``.
- ``status`` (retained): ``state`` ``online``/``offline``, ``bundle``, ``mode``.
- ``telemetry``: ``inference`` (count, errors, per_s, latency_ms p50/p95/p99), ``sensors``,
  ``mode``, ``bundle``, ``energy``, ``memory``, ``queue``.
- ``event``: ``kind`` (see :data:`EVENT_KINDS`), ``level``, ``message``, ``data``, and the
  ``correlation_id`` of the command it answers, if any.
- ``cmd`` (inbound): ``id``, ``action``, ``args``, ``sig`` — see :class:`CommandVerifier`.

Commands are authenticated with the fleet's ed25519 key, the same key that signs bundles (the
device already holds its public half as ``store.public_key``): ``sig`` is the base64 signature
of the canonical JSON (sorted keys, no spaces) of the command without ``sig``. A command is
accepted once (its ``id`` is remembered) and only within ``max_skew_s`` of the device clock.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundle import signing
from ..bundle.manifest import canonical_json
from ..errors import SignatureError, TransportError

ROOT = "edgekit/v1"
KINDS = ("status", "telemetry", "event", "cmd", "ota", "offload/req", "offload/resp")
SCHEMAS = {kind: f"edgekit.{kind.replace('/', '_')}/1" for kind in KINDS}
EVENT_KINDS = ("start", "stop", "mode_change", "install", "rollback", "reload", "cmd_result",
               "cmd_error", "error")
LEVELS = ("info", "warning", "error")
ACTIONS: dict[str, dict[str, tuple[type, ...]]] = {  # action -> allowed args and their types
    "set_mode": {"mode": (str,), "duration_s": (int, float)},
    "reload": {},
    "rollback": {},
    "report_now": {},
}
_REQUIRED_ARGS = {"set_mode": ("mode",)}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_CMD_BYTES = 16 << 10
MAX_PAYLOAD_BYTES = 1 << 20


def check_name(value: str, what: str) -> str:
    """A fleet or device name: one topic level, no wildcards, no slashes."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise TransportError(f"{what} {value!r} must be 1-64 of letters, digits, '_', '.', '-'")
    return value


@dataclass(frozen=True)
class Topics:
    fleet: str
    device: str

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet")
        check_name(self.device, "device")

    def topic(self, kind: str) -> str:
        if kind not in KINDS:
            raise TransportError(f"unknown topic kind {kind!r} (allowed: {', '.join(KINDS)})")
        return f"{ROOT}/{self.fleet}/{self.device}/{kind}"

    status = property(lambda self: self.topic("status"))
    telemetry = property(lambda self: self.topic("telemetry"))
    event = property(lambda self: self.topic("event"))
    cmd = property(lambda self: self.topic("cmd"))
    ota = property(lambda self: self.topic("ota"))
    offload_req = property(lambda self: self.topic("offload/req"))
    offload_resp = property(lambda self: self.topic("offload/resp"))


def subscription(fleet: str = "+", kind: str = "#", device: str = "+") -> str:
    """A topic filter, e.g. every device's status in a fleet: ``subscription('lab', 'status')``."""
    if fleet != "+":
        check_name(fleet, "fleet")
    if device != "+":
        check_name(device, "device")
    if kind != "#" and kind not in KINDS:
        raise TransportError(f"unknown topic kind {kind!r} (allowed: {', '.join(KINDS)})")
    return f"{ROOT}/{fleet}/{device}/{kind}"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """``(fleet, device, kind)`` of an edgekit topic."""
    prefix = ROOT + "/"
    parts = topic[len(prefix):].split("/", 2) if topic.startswith(prefix) else []
    if len(parts) != 3 or parts[2] not in KINDS:
        raise TransportError(f"not an edgekit topic: {topic!r}")
    return check_name(parts[0], "fleet"), check_name(parts[1], "device"), parts[2]


# --- payloads ----------------------------------------------------------------------------------

def envelope(kind: str, device: str, seq: int, ts: float | None = None, /, **body: Any) -> dict[str, Any]:
    return {"schema": SCHEMAS[kind], "device": device, "seq": seq,
            "ts": round(time.time() if ts is None else ts, 6), **body}


def status_payload(device: str, seq: int, state: str, *, bundle: dict[str, Any] | None = None,
                   mode: str | None = None, will: bool = False, ts: float | None = None,
                   **extra: Any) -> dict[str, Any]:
    if state not in ("online", "offline"):
        raise TransportError(f"status state {state!r} must be online or offline")
    body = {"state": state, "bundle": bundle, "mode": mode, **extra}
    if will:
        body["will"] = True
    return envelope("status", device, seq, ts, **body)


def event_payload(device: str, seq: int, kind: str, message: str, *, level: str = "info",
                  data: dict[str, Any] | None = None, correlation_id: str | None = None,
                  ts: float | None = None) -> dict[str, Any]:
    if kind not in EVENT_KINDS:
        raise TransportError(f"unknown event kind {kind!r} (allowed: {', '.join(EVENT_KINDS)})")
    if level not in LEVELS:
        raise TransportError(f"unknown event level {level!r} (allowed: {', '.join(LEVELS)})")
    body: dict[str, Any] = {"kind": kind, "level": level, "message": message, "data": data or {}}
    if correlation_id is not None:
        body["correlation_id"] = correlation_id
    return envelope("event", device, seq, ts, **body)


def telemetry_payload(device: str, seq: int, *, ts: float | None = None, **body: Any) -> dict[str, Any]:
    return envelope("telemetry", device, seq, ts, **body)


_NUMBER = (int, float)
_BODY_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "status": {"state": (str,)},
    "telemetry": {"interval_s": _NUMBER, "mode": (str,), "inference": (dict,), "sensors": (dict,),
                  "queue": (dict,)},
    "event": {"kind": (str,), "level": (str,), "message": (str,), "data": (dict,)},
}


def encode(payload: dict[str, Any]) -> bytes:
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TransportError(f"payload is not JSON-serialisable: {exc}") from None


def decode(data: bytes, kind: str, *, limit: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Parse and check an outbound-style payload (status/telemetry/event/...) of ``kind``."""
    obj = _json_object(data, limit, kind)
    validate(obj, kind)
    return obj


def validate(obj: dict[str, Any], kind: str) -> None:
    expected = SCHEMAS.get(kind)
    if expected is None:
        raise TransportError(f"unknown payload kind {kind!r} (allowed: {', '.join(KINDS)})")
    if obj.get("schema") != expected:
        raise TransportError(f"{kind} payload schema is {obj.get('schema')!r}, expected {expected!r}")
    _field(obj, "device", (str,), kind)
    check_name(obj["device"], f"{kind} device")
    _field(obj, "seq", (int,), kind)
    if obj["seq"] < 0:
        raise TransportError(f"{kind} payload seq {obj['seq']} is negative")
    _field(obj, "ts", _NUMBER, kind)
    for name, types in _BODY_TYPES.get(kind, {}).items():
        _field(obj, name, types, kind)
    if kind == "status" and obj["state"] not in ("online", "offline"):
        raise TransportError(f"status state {obj['state']!r} must be online or offline")
    if kind == "event" and obj["kind"] not in EVENT_KINDS:
        raise TransportError(f"unknown event kind {obj['kind']!r}")


def _field(obj: dict[str, Any], name: str, types: tuple[type, ...], kind: str) -> Any:
    if name not in obj:
        raise TransportError(f"{kind} payload has no {name!r}")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, types) or (
            isinstance(value, float) and not math.isfinite(value)):
        names = "/".join(t.__name__ for t in types)
        raise TransportError(f"{kind} payload field {name!r} must be {names}, got {value!r:.60}")
    return value


def _json_object(data: bytes, limit: int, kind: str) -> dict[str, Any]:
    if len(data) > limit:
        raise TransportError(f"{kind} payload is {len(data)} bytes, over the {limit} byte limit")
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError:
        raise TransportError(f"{kind} payload is not UTF-8") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise TransportError(f"{kind} payload is not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise TransportError(f"{kind} payload must be a JSON object, got {type(obj).__name__}")
    return obj


# --- commands ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    id: str
    action: str
    args: dict[str, Any]
    device: str
    seq: int
    ts: float
    reply_to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "args": dict(self.args), "device": self.device,
                "seq": self.seq, "ts": self.ts, "reply_to": self.reply_to}


_CMD_KEYS = ("schema", "device", "seq", "ts", "id", "action", "args", "sig", "reply_to")


def sign_command(private_key: Any, device: str, action: str, args: dict[str, Any] | None = None, *,
                 seq: int = 0, ts: float | None = None, command_id: str | None = None,
                 reply_to: str | None = None) -> bytes:
    """The bytes to publish on a device's ``cmd`` topic (host side; key from ``load_private_key``)."""
    body = {"schema": SCHEMAS["cmd"], "device": check_name(device, "device"), "seq": int(seq),
            "ts": round(time.time() if ts is None else ts, 6),
            "id": command_id or uuid.uuid4().hex, "action": action, "args": dict(args or {})}
    if reply_to is not None:
        body["reply_to"] = reply_to
    sig = signing.sign(private_key, canonical_json(body))
    return encode({**body, "sig": base64.b64encode(sig).decode("ascii")})


@dataclass
class CommandVerifier:
    """Strict parser and authenticator of inbound ``cmd`` payloads for one device."""

    device: str
    public_key: Path | None
    max_skew_s: float = 300.0
    remember: int = 4096
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._key = signing.load_public_key(self.public_key) if self.public_key else None

    def parse(self, data: bytes, now: float | None = None) -> Command:
        """A valid, authentic, fresh command, or TransportError with a one-line reason."""
        obj = _json_object(data, MAX_CMD_BYTES, "cmd")
        command_id = obj.get("id")
        if not isinstance(command_id, str) or not _ID_RE.match(command_id):
            raise TransportError(f"cmd 'id' must be 1-64 of letters, digits, '_.:-', got {command_id!r:.40}")
        for key in obj:
            if key not in _CMD_KEYS:
                raise TransportError(f"cmd has unknown field {key!r:.40} (allowed: {', '.join(_CMD_KEYS)})")
        if obj.get("schema") != SCHEMAS["cmd"]:
            raise TransportError(f"cmd schema is {obj.get('schema')!r:.40}, expected {SCHEMAS['cmd']!r}")
        if obj.get("device") != self.device:
            raise TransportError(f"cmd is for device {obj.get('device')!r:.40}, this is {self.device!r}")
        seq, ts = _field(obj, "seq", (int,), "cmd"), _field(obj, "ts", _NUMBER, "cmd")
        action = obj.get("action")
        if action not in ACTIONS:
            raise TransportError(f"unknown cmd action {action!r:.40} (allowed: {', '.join(ACTIONS)})")
        args = _check_args(action, obj.get("args", {}))
        reply_to = obj.get("reply_to")
        if reply_to is not None and (not isinstance(reply_to, str) or not reply_to or
                                     any(c in reply_to for c in "+#\x00")):
            raise TransportError(f"cmd 'reply_to' must be a topic without wildcards, got {reply_to!r:.40}")
        self._authenticate(obj)
        self._check_fresh(command_id, float(ts), time.time() if now is None else now)
        return Command(id=command_id, action=action, args=args, device=self.device, seq=seq,
                       ts=float(ts), reply_to=reply_to)

    def _authenticate(self, obj: dict[str, Any]) -> None:
        if self._key is None:
            raise TransportError("commands are refused: no fleet public key configured (store.public_key)")
        sig_text = obj.get("sig")
        if not isinstance(sig_text, str):
            raise TransportError("cmd is not signed (no 'sig')")
        try:
            sig = base64.b64decode(sig_text, validate=True)
        except ValueError:
            raise TransportError("cmd 'sig' is not base64") from None
        body = {k: v for k, v in obj.items() if k != "sig"}
        try:
            signing.verify(self._key, canonical_json(body), sig)
        except SignatureError as exc:
            raise TransportError(f"cmd signature rejected: {exc}") from None
        except ValueError as exc:  # canonical_json refuses NaN
            raise TransportError(f"cmd cannot be canonicalised: {exc}") from None

    def _check_fresh(self, command_id: str, ts: float, now: float) -> None:
        if abs(now - ts) > self.max_skew_s:
            raise TransportError(f"cmd is {now - ts:+.0f} s old, outside the ±{self.max_skew_s:g} s window")
        if command_id in self._seen:
            raise TransportError(f"cmd {command_id!r} was already executed (replay)")
        self._seen[command_id] = None
        while len(self._seen) > self.remember:
            self._seen.popitem(last=False)


def _check_args(action: str, args: Any) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise TransportError(f"cmd 'args' must be an object, got {type(args).__name__}")
    allowed = ACTIONS[action]
    for key, value in args.items():
        if key not in allowed:
            names = ", ".join(allowed) or "none"
            raise TransportError(f"{action} has no argument {key!r:.40} (allowed: {names})")
        if isinstance(value, bool) or not isinstance(value, allowed[key]) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise TransportError(f"{action} argument {key!r} has the wrong type: {value!r:.40}")
    for key in _REQUIRED_ARGS.get(action, ()):
        if key not in args:
            raise TransportError(f"{action} needs argument {key!r}")
    if "duration_s" in args and not 0 < args["duration_s"] <= 7 * 86400:
        raise TransportError(f"{action} duration_s must be in (0, 604800], got {args['duration_s']!r}")
    return dict(args)


def command_id_of(data: bytes) -> str | None:
    """Best-effort ``id`` of a (possibly bad) command, to correlate the error event."""
    try:
        obj = json.loads(bytes(data).decode("utf-8")) if len(data) <= MAX_PAYLOAD_BYTES else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    cid = obj.get("id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and _ID_RE.match(cid) else None
