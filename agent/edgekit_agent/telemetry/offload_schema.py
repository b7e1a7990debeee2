"""Offload payloads: ``offload/req`` (device -> coordinator), ``offload/work`` (coordinator ->
worker) and ``offload/resp`` (worker or coordinator -> the requester's ``reply_to``).

A payload is one line of JSON (the header, with ``schema`` like every edgekit payload), a
``\\n``, then an optional :mod:`.tensorwire` blob (inputs of a request or work item, outputs of
an ``ok`` response). ``json.dumps`` never writes a raw newline, so the first ``\\n`` ends the
header. Request and response carry ``reply_to`` and ``correlation_id`` in the header so the
exchange works on MQTT 3.1.1 brokers too. Receivers tolerate duplicates by ``correlation_id``.

Header keys (besides ``schema``, ``device`` = the sender, ``seq``, ``ts``):

- req:  ``correlation_id``, ``reply_to`` (the requester's own ``offload/resp`` topic),
  ``deadline_ms`` (the requester runs locally after that), ``bundle`` (name), ``bundle_id``,
  optional ``local_ms`` (its own expected latency), ``exclude`` (workers not to use) and
  ``split`` (the blob is a cut tensor: see :func:`validate_split`).
- work: ``correlation_id``, ``reply_to``, ``origin`` (the requester), ``deadline_ms`` (left),
  ``bundle``, ``bundle_id``, optional ``split`` (copied from the request).
- resp: ``correlation_id``, ``status`` (see :data:`RESP_STATUSES`), ``served_by``, optional
  ``service_ms`` and ``error``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import TransportError
from ..validate import Table
from .schema import ROOT, SCHEMAS, check_name, parse_topic

MAX_HEADER_BYTES = 4096
MAX_DEADLINE_MS = 600_000
RESP_STATUSES = ("ok", "error", "run_local")
ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_ID_RULE = "an id of 1-64 letters, digits, '_.:-'"
_COMMON = ("schema", "device", "seq", "ts", "correlation_id")
_KEYS = {
    "offload/req": (*_COMMON, "reply_to", "deadline_ms", "bundle", "bundle_id", "local_ms",
                    "exclude", "split"),
    "offload/work": (*_COMMON, "reply_to", "origin", "deadline_ms", "bundle", "bundle_id", "split"),
    "offload/resp": (*_COMMON, "status", "served_by", "service_ms", "error"),
}


@dataclass(frozen=True)
class Frame:
    """One offload payload: its validated header and the raw tensor blob (possibly empty)."""

    kind: str
    header: dict[str, Any]
    blob: bytes

    @property
    def correlation_id(self) -> str:
        return str(self.header["correlation_id"])


def frame(header: dict[str, Any], blob: bytes = b"") -> bytes:
    """The payload bytes for a header (already holding ``schema``) and a tensor blob."""
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return head + b"\n" + blob


def parse(payload: bytes, kind: str) -> Frame:
    """Split and validate a payload of ``kind``; a bad one is a one-line ``TransportError``."""
    data = bytes(payload)
    cut = data.find(b"\n", 0, MAX_HEADER_BYTES + 1)
    if cut < 0:
        raise TransportError(f"{kind} payload has no header line within {MAX_HEADER_BYTES} bytes")
    try:
        header = json.loads(data[:cut].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TransportError(f"{kind} payload header is not JSON") from None
    validate(header, kind)
    return Frame(kind, header, data[cut + 1:])


def validate(header: Any, kind: str) -> None:
    if kind not in _KEYS:
        raise TransportError(f"not an offload payload kind: {kind!r}")
    t = Table(header, f"{kind} payload", error=TransportError)
    t.only(_KEYS[kind])
    t.choice("schema", (SCHEMAS[kind],))
    check_name(t.get("device", str), f"{kind} payload: device")
    t.integer("seq", lo=0)
    t.number("ts", lo=0)
    t.string("correlation_id", pattern=ID_RE, what=_ID_RULE)
    if kind == "offload/resp":
        t.choice("status", RESP_STATUSES)
        check_name(t.get("served_by", str), f"{kind} payload: served_by")
        t.number("service_ms", None, lo=0)
        t.get("error", str, None)
        return
    reply_topic(t.get("reply_to", str), f"{kind} payload: reply_to")
    t.number("deadline_ms", lo=1, hi=MAX_DEADLINE_MS)
    t.string("bundle", nonempty=True)
    t.get("bundle_id", str)
    if "split" in t:
        validate_split(t.table("split"))
    if kind == "offload/work":
        check_name(t.get("origin", str), f"{kind} payload: origin")
        return
    t.number("local_ms", None, lo=0)
    for name in t.items("exclude", str, ()):
        check_name(name, f"{kind} payload: exclude")


def validate_split(t: Table) -> None:
    """``{"cut": tensor name}``, plus ``scale`` and ``zero_point`` when the tensor is int8."""
    t.only(("cut", "scale", "zero_point"))
    t.string("cut", nonempty=True)
    if len(t.data["cut"]) > 255:
        raise t.fail("cut", t.data["cut"][:80], "a tensor name of at most 255 characters")
    if "scale" in t or "zero_point" in t:
        t.number("scale", lo=1e-30, hi=1e30)
        t.integer("zero_point", lo=-128, hi=127)


def reply_topic(topic: str, what: str = "reply_to") -> tuple[str, str]:
    """``(fleet, device)`` of an ``offload/resp`` topic: the only place a reply may go."""
    try:
        fleet, device, kind = parse_topic(topic)
    except TransportError:
        kind = ""
    if kind != "offload/resp":
        raise TransportError(f"{what}: {topic!r:.80} is not an {ROOT}/<fleet>/<device>/offload/resp "
                             "topic")
    return fleet, device
