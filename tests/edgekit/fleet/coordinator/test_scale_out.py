"""Scale-out: two coordinators of one group share the offload requests through an MQTT shared
subscription (each request routed once), and when one stops the other takes them all."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from edgekit_agent.bundle.manifest import bundle_id
from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.telemetry import offload_schema, tensorwire
from edgekit_agent.telemetry.schema import SCHEMAS

from .conftest import wait_until

pytestmark = pytest.mark.host


def test_two_coordinators_share_requests(broker, collect, fleet_agent, start_coordinator,
                                         fleet_name, power_bundle):
    first, second = start_coordinator(name="c1"), start_coordinator(name="c2")
    fleet_agent("coral", "coral")
    for c in (first, second):  # each builds its own registry from the broker
        wait_until(lambda c=c: c.devices().get("coral", {}).get("service_ms_p50"), 30, "a worker")
    base = f"edgekit/v1/{fleet_name}"
    answers = collect(broker, f"{base}/asker/offload/resp")
    manifest = open_bundle(power_bundle).manifest
    blob = tensorwire.encode({"image": np.zeros((1, 8, 8, 1), np.float32)})

    def ask(n: int) -> list[str]:
        cids = [uuid.uuid4().hex for _ in range(n)]
        for cid in cids:
            head = {"schema": SCHEMAS["offload/req"], "device": "asker", "seq": 1,
                    "ts": time.time(), "correlation_id": cid,
                    "reply_to": f"{base}/asker/offload/resp", "deadline_ms": 5000,
                    "bundle": manifest.name, "bundle_id": bundle_id(manifest)}
            answers.client.publish(f"{base}/asker/offload/req", offload_schema.frame(head, blob),
                                   qos=1)
        return cids

    def answered(cids: list[str]) -> dict[str, list[str]]:
        got: dict[str, list[str]] = {}
        for m in answers.of("offload/resp"):
            h = offload_schema.parse(m.raw, "offload/resp").header
            if h["correlation_id"] in cids:
                got.setdefault(h["correlation_id"], []).append(h["served_by"])
        return got

    cids = ask(100)
    got = wait_until(lambda: g if len(g := answered(cids)) == 100 else None, 30, "100 answers")
    assert all(v == ["coral"] for v in got.values())  # routed once each, by one coordinator
    routed = [c.get("/api/stats")["coordinator"]["dispatched"] for c in (first, second)]
    print(f"requests routed by c1/c2: {routed}")
    assert sum(routed) == 100 and min(routed) >= 20  # both members of the group took a share

    second.stop()
    cids = ask(50)
    got = wait_until(lambda: g if len(g := answered(cids)) == 50 else None, 30, "50 more answers")
    assert all(v == ["coral"] for v in got.values())
    assert first.get("/api/stats")["coordinator"]["dispatched"] == routed[0] + 50
