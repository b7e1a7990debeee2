"""MQTT topics and payloads: the one definition the agent, coordinator and fleet CLI share.

Topics: ``edgekit/v1/<fleet>/<device>/<kind>`` with kind one of :data:`KINDS`.

Payloads are UTF-8 JSON objects. Every one carries ``schema`` (``edgekit.<kind>/1``),
``device``, ``seq`` and ``ts`` (Unix seconds, when it was produced):

- ``seq`` numbers every message a device queues (all topics share one counter), starting at 1
  and never reused, also across restarts. QoS 1 is at-least-once: receivers drop duplicates by
  ``seq``. Gaps mean messages dropped by the bounded queue (counted in telemetry ``queue``).
  The last-will ``status`` is composed before the fact, so it carries ``seq`` 0 and ``will``.
- ``status`` (retained): ``state`` ``online``/``offline``, ``bundle``, ``mode``, ``link``.
- ``telemetry``: ``inference`` (count, errors, per_s, latency_ms p50/p95/p99), ``sensors``,
  ``mode``, ``bundle``, ``energy``, ``memory``, ``queue``, ``offload``, ``link`` (the device's
  estimate of its link: ``rtt_ms``, ``bandwidth_bps``, ``fixed_ms``, ``samples``; see
  ``service/linkstats.py``), ``split`` (cuts, current choice, counts; ``service/split.py``).
- ``offload/probe`` (outbound, QoS 1, no subscriber needed): link probes timed to their PUBACK.
- ``event``: ``kind`` (see :data:`EVENT_KINDS`), ``level``, ``message``, ``data``, and the
  ``correlation_id`` of the command it answers, if any.
- ``cmd`` (inbound): ``id``, ``action``, ``args``, ``sig`` — see :class:`CommandVerifier`.
- ``ota`` (inbound): ``type`` ``offer`` (signed, names the bundle's sha256, size and chunking),
  ``chunk`` (``index``, ``total``, ``chunk_sha256``, base64 ``data``) or ``cancel`` (signed) —
  see :func:`parse_ota`.

Commands are authenticated with the fleet's ed25519 key, the same key that signs bundles (the
device already holds its public half as ``store.public_key``): ``sig`` is the base64 signature
of the canonical JSON (sorted keys, no spaces) of the command without ``sig``. A command is
accepted once (its ``id`` is remembered, durably per key when the daemon gives a replay file:
see :mod:`..store.replay`) and only within ``max_skew_s`` (60 s) of the device clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import signing
from ..bundle.manifest import canonical_json
from ..defaults import DEVICE_NAME_RE, DEVICE_NAME_RULE
from ..errors import CommandError, EdgekitError, SignatureError, TransportError
from ..store.replay import DEFAULT_CAPACITY, FRESHNESS_WINDOW_S, ReplayCache
from ..validate import NUMBER, REQUIRED, Table, invalid

ROOT = "edgekit/v1"
KINDS = ("status", "telemetry", "event", "cmd", "ota", "offload/req", "offload/resp",
         "offload/work", "offload/probe")
SCHEMAS = {kind: f"edgekit.{kind.replace('/', '_')}/1" for kind in KINDS}
EVENT_KINDS = ("start", "stop", "mode_change", "install", "rollback", "reload", "cmd_result",
               "cmd_error", "error",
               # over-the-air rollouts (service/ota.py): each carries data.rollout
               "ota_received", "ota_progress", "ota_failed", "installed", "selftest_failed",
               "health_ok", "health_failed", "rolled_back")
LEVELS = ("info", "warning", "error")
STATES = ("online", "offline")
ACTIONS: dict[str, dict[str, tuple[type, ...]]] = {  # action -> allowed args and their types
    "set_mode": {"mode": (str,), "duration_s": (int, float)},
    "reload": {},
    "rollback": {},
    "report_now": {},
}
_REQUIRED_ARGS = {"set_mode": ("mode",)}
_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_CMD_BYTES = 16 << 10
MAX_PAYLOAD_BYTES = 1 << 20
MAX_DURATION_S = 7 * 86400


def check_name(value: str, what: str) -> str:
    """A fleet or device name: one topic level, no wildcards, no slashes."""
    if not isinstance(value, str) or not DEVICE_NAME_RE.match(value):
        raise invalid("", what, value, DEVICE_NAME_RULE, error=TransportError)
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
            raise invalid("", "topic kind", kind, "a topic kind", KINDS, error=TransportError)
        return f"{ROOT}/{self.fleet}/{self.device}/{kind}"

    status = property(lambda self: self.topic("status"))
    telemetry = property(lambda self: self.topic("telemetry"))
    event = property(lambda self: self.topic("event"))
    cmd = property(lambda self: self.topic("cmd"))
    ota = property(lambda self: self.topic("ota"))
    offload_req = property(lambda self: self.topic("offload/req"))
    offload_resp = property(lambda self: self.topic("offload/resp"))
    offload_work = property(lambda self: self.topic("offload/work"))
    offload_probe = property(lambda self: self.topic("offload/probe"))


def subscription(fleet: str = "+", kind: str = "#", device: str = "+") -> str:
    """A topic filter, e.g. every device's status in a fleet: ``subscription('lab', 'status')``."""
    if fleet != "+":
        check_name(fleet, "fleet")
    if device != "+":
        check_name(device, "device")
    if kind != "#" and kind not in KINDS:
        raise invalid("", "topic kind", kind, "a topic kind", KINDS, error=TransportError)
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
    if state not in STATES:
        raise invalid("status payload", "state", state, "a status state", STATES, error=TransportError)
    body = {"state": state, "bundle": bundle, "mode": mode, **extra}
    if will:
        body["will"] = True
    return envelope("status", device, seq, ts, **body)


def event_payload(device: str, seq: int, kind: str, message: str, *, level: str = "info",
                  data: dict[str, Any] | None = None, correlation_id: str | None = None,
                  ts: float | None = None) -> dict[str, Any]:
    if kind not in EVENT_KINDS:
        raise invalid("event payload", "kind", kind, "an event kind", EVENT_KINDS, error=TransportError)
    if level not in LEVELS:
        raise invalid("event payload", "level", level, "an event level", LEVELS, error=TransportError)
    body: dict[str, Any] = {"kind": kind, "level": level, "message": message, "data": data or {}}
    if correlation_id is not None:
        body["correlation_id"] = correlation_id
    return envelope("event", device, seq, ts, **body)


def telemetry_payload(device: str, seq: int, *, ts: float | None = None, **body: Any) -> dict[str, Any]:
    return envelope("telemetry", device, seq, ts, **body)


_BODY_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "status": {"state": (str,)},
    "telemetry": {"interval_s": NUMBER, "mode": (str,), "inference": (dict,), "sensors": (dict,),
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
    if kind not in SCHEMAS:
        raise invalid("", "payload kind", kind, "a payload kind", KINDS, error=TransportError)
    t = Table(obj, f"{kind} payload", error=TransportError)
    t.choice("schema", (SCHEMAS[kind],))
    check_name(t.get("device", str), f"{kind} payload: device")
    t.integer("seq", lo=0)
    t.get("ts", NUMBER)
    for name, types in _BODY_TYPES.get(kind, {}).items():
        t.get(name, types)
    if kind == "status":
        t.choice("state", STATES)
    if kind == "event":
        t.choice("kind", EVENT_KINDS)


def _json_object(data: bytes, limit: int, kind: str,
                 error: type[EdgekitError] = TransportError) -> dict[str, Any]:
    if len(data) > limit:
        raise error(f"{kind} payload is {len(data)} bytes, over the {limit} byte limit")
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{kind} payload is not UTF-8") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{kind} payload is not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise error(f"{kind} payload must be a JSON object, got {type(obj).__name__}")
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
    try:
        message = canonical_json(body)
    except (TypeError, ValueError) as exc:  # NaN/infinity or a non-JSON type in args
        raise CommandError(f"cmd cannot be signed: {exc}") from None
    sig = signing.sign(private_key, message)
    return encode({**body, "sig": base64.b64encode(sig).decode("ascii")})


@dataclass
class CommandVerifier:
    """Strict parser and authenticator of inbound ``cmd`` payloads for one device."""

    device: str
    public_key: Path | None
    max_skew_s: float = FRESHNESS_WINDOW_S
    remember: int = DEFAULT_CAPACITY
    replay_dir: Path | None = None  # None: ids remembered in memory only (tests, tools)

    def __post_init__(self) -> None:
        self._key = signing.load_public_key(self.public_key) if self.public_key else None
        path = None
        if self.replay_dir is not None and self._key is not None:
            path = Path(self.replay_dir) / f"replay-{signing.key_id(self._key)}.json"
        self._seen = ReplayCache(path, self.max_skew_s, self.remember)

    def parse(self, data: bytes, now: float | None = None) -> Command:
        """A valid, authentic, fresh command, or CommandError with a one-line reason."""
        t = Table(_json_object(data, MAX_CMD_BYTES, "cmd", CommandError), "cmd", error=CommandError)
        command_id = t.string("id", pattern=_ID_RE, what="an id of 1-64 letters, digits, '_.:-'")
        t.only(_CMD_KEYS)
        t.choice("schema", (SCHEMAS["cmd"],))
        t.choice("device", (self.device,))
        seq, ts = t.get("seq", int), t.get("ts", NUMBER)
        action = t.choice("action", tuple(ACTIONS))
        args = _check_args(action, t.table("args"))
        reply_to = t.data.get("reply_to")
        if reply_to is not None and (not isinstance(reply_to, str) or not reply_to or
                                     any(c in reply_to for c in "+#\x00")):
            raise t.fail("reply_to", reply_to, "a topic without wildcards")
        self._authenticate(dict(t.data))
        self._check_fresh(command_id, float(ts), time.time() if now is None else now)
        return Command(id=command_id, action=action, args=args, device=self.device, seq=seq,
                       ts=float(ts), reply_to=reply_to)

    def _authenticate(self, obj: dict[str, Any]) -> None:
        if self._key is None:
            raise CommandError("commands are refused: no fleet public key configured (store.public_key)")
        sig_text = obj.get("sig")
        if not isinstance(sig_text, str):
            raise CommandError("cmd is not signed (no 'sig')")
        try:
            sig = base64.b64decode(sig_text, validate=True)
        except ValueError:
            raise CommandError("cmd 'sig' is not base64") from None
        body = {k: v for k, v in obj.items() if k != "sig"}
        try:
            signing.verify(self._key, canonical_json(body), sig)
        except SignatureError as exc:
            raise CommandError(f"cmd signature rejected: {exc}") from None
        except ValueError as exc:  # canonical_json refuses NaN
            raise CommandError(f"cmd cannot be canonicalised: {exc}") from None

    def _check_fresh(self, command_id: str, ts: float, now: float) -> None:
        if abs(now - ts) > self.max_skew_s:
            raise CommandError(f"cmd is {now - ts:+.0f} s old, outside the ±{self.max_skew_s:g} s window")
        self._seen.check_and_add(command_id, ts, now)


def _check_args(action: str, args: Table) -> dict[str, Any]:
    allowed = ACTIONS[action]
    args.only(tuple(allowed))
    for key, types in allowed.items():
        args.get(key, types, REQUIRED if key in _REQUIRED_ARGS.get(action, ()) else None)
    duration = args.data.get("duration_s")
    if duration is not None and not 0 < duration <= MAX_DURATION_S:
        raise args.fail("duration_s", duration, f"a duration in (0, {MAX_DURATION_S}] s")
    return dict(args.data)


def command_id_of(data: bytes) -> str | None:
    """Best-effort ``id`` of a (possibly bad) command, to correlate the error event."""
    try:
        obj = json.loads(bytes(data).decode("utf-8")) if len(data) <= MAX_PAYLOAD_BYTES else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    cid = obj.get("id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and _ID_RE.match(cid) else None


# --- over-the-air bundle transfer (the ``ota`` topic) -------------------------------------------

OTA_TYPES = ("offer", "chunk", "cancel")
MAX_OTA_CHUNK_BYTES = 512 << 10  # base64 makes a chunk message 4/3 of this: under MAX_PAYLOAD_BYTES
MAX_OTA_BUNDLE_BYTES = 1 << 30
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_OTA_COMMON = ("schema", "type", "device", "seq", "ts", "rollout")
_OTA_KEYS = {
    "offer": _OTA_COMMON + ("sha256", "size", "chunk_size", "chunks", "window", "name", "version",
                            "bundle_id", "expires", "health", "allow_downgrade", "sig"),
    "chunk": _OTA_COMMON + ("sha256", "index", "total", "chunk_sha256", "data"),
    "cancel": _OTA_COMMON + ("reason", "sig"),
}
_HEALTH_KEYS = ("window_s", "max_error_rate", "max_latency_ratio", "latency_slack_ms")


def ota_body(kind: str, device: str, rollout: str, ts: float | None = None, **body: Any) -> dict[str, Any]:
    """An unsigned ``ota`` message of type ``kind`` (host side)."""
    return {"schema": SCHEMAS["ota"], "type": kind, "device": check_name(device, "device"), "seq": 0,
            "ts": round(time.time() if ts is None else ts, 6), "rollout": rollout, **body}


def sign_ota(private_key: Any, body: dict[str, Any]) -> bytes:
    """The bytes of a signed ``offer``/``cancel`` (the same ed25519 key and form as commands)."""
    sig = signing.sign(private_key, canonical_json(body))
    return encode({**body, "sig": base64.b64encode(sig).decode("ascii")})


def parse_ota(data: bytes, device: str, public_key: Any) -> dict[str, Any]:
    """A valid ``ota`` message for ``device`` (offer/cancel authenticated), or TransportError.

    A chunk is not signed: its ``chunk_sha256`` is checked here and the whole file against the
    signed offer's ``sha256`` before anything is installed."""
    limit = MAX_PAYLOAD_BYTES
    t = Table(_json_object(data, limit, "ota"), "ota", error=TransportError)
    kind = t.choice("type", OTA_TYPES)
    t.only(_OTA_KEYS[kind])
    t.choice("schema", (SCHEMAS["ota"],))
    t.choice("device", (device,))
    t.integer("seq", lo=0)
    t.get("ts", NUMBER)
    t.string("rollout", pattern=_ID_RE, what="a rollout id of 1-64 letters, digits, '_.:-'")
    if kind == "chunk":
        return _ota_chunk(t)
    if kind == "offer":
        _ota_offer(t)
    _ota_authenticate(dict(t.data), public_key)
    return dict(t.data)


def _ota_offer(t: Table) -> None:
    t.string("sha256", pattern=_SHA_RE, what="a sha256 in hex")
    size = t.integer("size", lo=1, hi=MAX_OTA_BUNDLE_BYTES)
    chunk_size = t.integer("chunk_size", lo=1024, hi=MAX_OTA_CHUNK_BYTES)
    chunks = t.integer("chunks", lo=1)
    if chunks != -(-size // chunk_size):
        raise t.fail("chunks", chunks, f"ceil(size / chunk_size) = {-(-size // chunk_size)}")
    t.integer("window", lo=1, hi=64)
    t.string("name")
    t.string("version")
    t.string("bundle_id")
    t.get("expires", NUMBER)
    t.boolean("allow_downgrade", False)  # signed operator override of the store's anti-rollback
    health = t.table("health")
    health.only(_HEALTH_KEYS)
    health.number("window_s", 0.0, lo=0.0, hi=86400.0)
    health.number("max_error_rate", 0.0, lo=0.0, hi=1.0)
    health.number("max_latency_ratio", 2.0, lo=1.0, hi=1000.0)
    health.number("latency_slack_ms", 5.0, lo=0.0, hi=1e6)


def _ota_chunk(t: Table) -> dict[str, Any]:
    t.string("sha256", pattern=_SHA_RE, what="a sha256 in hex")
    total = t.integer("total", lo=1)
    index = t.integer("index", lo=0, hi=total - 1)
    digest = t.string("chunk_sha256", pattern=_SHA_RE, what="a sha256 in hex")
    try:
        chunk = base64.b64decode(t.string("data"), validate=True)
    except ValueError:
        raise t.fail("data", "...", "base64") from None
    if len(chunk) > MAX_OTA_CHUNK_BYTES:
        raise t.fail("data", f"{len(chunk)} bytes", f"at most {MAX_OTA_CHUNK_BYTES} bytes")
    if hashlib.sha256(chunk).hexdigest() != digest:
        raise TransportError(f"ota chunk {index}/{total}: data does not match its chunk_sha256")
    return {**t.data, "data": chunk}


def _ota_authenticate(obj: dict[str, Any], public_key: Any) -> None:
    if public_key is None:
        raise TransportError("ota is refused: no fleet public key configured (store.public_key)")
    sig_text = obj.get("sig")
    if not isinstance(sig_text, str):
        raise TransportError(f"ota {obj.get('type')} is not signed (no 'sig')")
    try:
        sig = base64.b64decode(sig_text, validate=True)
        signing.verify(public_key, canonical_json({k: v for k, v in obj.items() if k != "sig"}), sig)
    except SignatureError as exc:
        raise TransportError(f"ota {obj.get('type')} signature rejected: {exc}") from None
    except ValueError as exc:
        raise TransportError(f"ota {obj.get('type')} signature unreadable: {exc}") from None
