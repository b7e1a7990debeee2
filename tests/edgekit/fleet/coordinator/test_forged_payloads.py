"""Malformed and forged offload payloads against a coordinator subprocess on a real Mosquitto:
each gets an error answer (when it names a correlation id) or is dropped, all are counted, the
coordinator stays up and still routes a valid request."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edgekit_agent.telemetry import offload_schema, tensorwire
from edgekit_agent.telemetry.schema import SCHEMAS

from .conftest import wait_until

pytestmark = pytest.mark.host


def _req(fleet: str, device: str, cid: str, **over) -> dict:
    return {"schema": SCHEMAS["offload/req"], "device": device, "seq": 1, "ts": time.time(),
            "correlation_id": cid, "reply_to": f"edgekit/v1/{fleet}/{device}/offload/resp",
            "deadline_ms": 500, "bundle": "digits", "bundle_id": "x", **over}


def test_bad_requests_are_answered_or_dropped_and_counted(broker, collect, start_coordinator,
                                                          fleet_name):
    coordinator = start_coordinator()
    base = f"edgekit/v1/{fleet_name}"
    sub = collect(broker, f"{base}/+/offload/resp")
    blob = tensorwire.encode({"image": np.zeros((1, 8, 8, 1), np.float32)})
    frame = offload_schema.frame
    answered = {  # payload -> the correlation id its error answer must carry
        "bad-schema": frame(_req(fleet_name, "dev", "bad-schema", schema="edgekit.nope/1"), blob),
        "bad-deadline": frame(_req(fleet_name, "dev", "bad-deadline", deadline_ms=-5), blob),
        "bad-blob": frame(_req(fleet_name, "dev", "bad-blob"), b"EKT1\x05garbage"),
        "short-blob": frame(_req(fleet_name, "dev", "short-blob"), blob[:-7]),
        "forged-device": frame(_req(fleet_name, "mallory", "forged-device"), blob),
        "forged-reply": frame(_req(fleet_name, "dev", "forged-reply",
                                   reply_to=f"{base}/victim/offload/resp"), blob),
        "extra-key": frame(_req(fleet_name, "dev", "extra-key", shell="rm -rf /"), blob),
    }
    dropped = [b"", b"\xff\xfe not utf8", b"[1, 2, 3]\n", b"{" * 100_000,
               json.dumps({"schema": "x"}).encode() + b"\n",  # no correlation id to answer
               b"x" * 5000]  # no header line at all
    pub = sub.client
    for payload in list(answered.values()) + dropped:
        pub.publish(f"{base}/dev/offload/req", payload, qos=1)
    valid = frame(_req(fleet_name, "dev", "valid-one"), blob)
    for _ in range(2):  # still routes (no worker here, so run_local), and a repeat is dropped
        pub.publish(f"{base}/dev/offload/req", valid, qos=1)

    def answers() -> dict[str, dict]:
        out = {}
        for m in sub.of("offload/resp"):
            head = offload_schema.parse(m.raw, "offload/resp").header
            out[head["correlation_id"]] = {**head, "topic": m.topic}
        return out

    got = wait_until(lambda: a if len(a := answers()) == len(answered) + 1 else None, 10,
                     "an answer per bad request that names a correlation id, and the valid one")
    for cid in answered:
        assert got[cid]["status"] == "error" and got[cid]["topic"] == f"{base}/dev/offload/resp"
    # A forged reply_to never receives anything.
    assert {m.topic for m in sub.of("offload/resp")} == {f"{base}/dev/offload/resp"}
    assert got["valid-one"]["status"] == "run_local"
    stats = wait_until(lambda: s if (s := coordinator.get("/api/stats")["coordinator"])[
        "duplicates"] else None, 5, "the repeat counted")
    assert stats["rejected"] == len(answered) + len(dropped)
    assert stats["rejected_by_reason"] == {"forged": 2, "malformed": len(answered) + len(dropped) - 2}
    assert stats["run_local"] == 1 and stats["duplicates"] == 1 and coordinator.proc.poll() is None
    assert len([m for m in sub.of("offload/resp") if b'"valid-one"' in m.raw]) == 1
    metrics = coordinator.get("/metrics")
    assert 'edgekit_offload_rejected_total{reason="forged"} 2.0' in metrics
