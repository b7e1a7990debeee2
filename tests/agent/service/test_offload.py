"""The agent's offload link on a real Mosquitto: a request nobody answers, or answers late, or
that cannot even be sent, runs locally (never lost); a worker answers work once, refuses work
for another bundle and work whose deadline passed in its queue."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from edgekit_agent.config import MqttConfig, OffloadConfig
from edgekit_agent.service.agent import Agent
from edgekit_agent.service.offload import BREAKER_TIMEOUTS, OffloadLink
from edgekit_agent.telemetry import offload_schema, tensorwire
from edgekit_agent.telemetry.schema import SCHEMAS, Topics


@pytest.fixture
def agent(make_bundle, keypair):
    with Agent(make_bundle(), public_key=keypair[1]) as a:
        yield a


def _link(broker, agent, device: str, fleet: str = "offl", port: int | None = None,
          **options) -> OffloadLink:
    mqtt = MqttConfig(host=broker.host, port=port or broker.port, reconnect_min_s=0.1,
                      reconnect_max_s=0.5)
    bundle = {"name": agent.manifest.name, "id": agent.bundle_id}
    link = OffloadLink(mqtt, Topics(fleet, device), OffloadConfig(**options), local=agent.infer,
                       bundle=lambda: bundle)
    link.start()
    return link


IMAGE = {"image": np.random.default_rng(3).random((1, 8, 8, 1), dtype=np.float32)}


def test_unanswered_request_runs_locally_at_the_deadline(broker, collect, agent):
    requests = collect(broker, "edgekit/v1/offl/req1/offload/req")
    link = _link(broker, agent, "req1", enabled=True, deadline_ms=300.0)
    assert link.wait_connected(10)
    t0 = time.monotonic()
    out = link.infer(IMAGE)
    waited = time.monotonic() - t0
    assert out.served_by == "req1" and 0.3 <= waited < 1.0
    np.testing.assert_allclose(out["logits"], agent.infer(IMAGE)["logits"])
    req = requests.wait_for(lambda m: True, 5, "the request on the broker")
    frame = offload_schema.parse(req.raw, "offload/req")
    assert frame.header["reply_to"] == "edgekit/v1/offl/req1/offload/resp"
    np.testing.assert_array_equal(tensorwire.decode(frame.blob)["image"], IMAGE["image"])
    # A late answer is counted and dropped; the caller already has its result.
    head = {"schema": SCHEMAS["offload/resp"], "device": "w", "seq": 1, "ts": time.time(),
            "correlation_id": frame.correlation_id, "status": "ok", "served_by": "w"}
    requests.client.publish(frame.header["reply_to"], offload_schema.frame(head, frame.blob), qos=1)
    deadline = time.monotonic() + 5
    while link.counts["late"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert link.counts["late"] == 1 and link.counts["timeouts"] == 1
    assert link.counts["local_fallbacks"] == 1 and link.counts["requests"] == 1
    # Nobody is listening: after a few unanswered requests offload pauses, and requests stop
    # paying the deadline before running locally.
    for _ in range(BREAKER_TIMEOUTS - 1):
        link.infer(IMAGE)
    t0 = time.monotonic()
    assert link.infer(IMAGE).served_by == "req1" and time.monotonic() - t0 < 0.1
    assert link.counts["paused"] == 1 and link.counts["timeouts"] == BREAKER_TIMEOUTS
    link.stop()


def test_broker_unreachable_runs_locally_at_once(broker, agent):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = _link(broker, agent, "req2", port=port, enabled=True, deadline_ms=5000.0)
    t0 = time.monotonic()
    outs = [link.infer(IMAGE) for _ in range(20)]
    assert time.monotonic() - t0 < 1.0  # no waiting for a deadline when the link is down
    assert {o.served_by for o in outs} == {"req2"} and link.counts["local_fallbacks"] == 20
    link.stop()


def test_worker_answers_once_and_refuses_what_it_must(broker, collect, agent):
    worker = _link(broker, agent, "w1", worker=True, max_queue=4)
    assert worker.wait_connected(10)
    answers = collect(broker, "edgekit/v1/offl/asker/offload/resp")
    blob = tensorwire.encode(IMAGE)

    def work(cid: str, **over) -> bytes:
        head = {"schema": SCHEMAS["offload/work"], "device": "coord", "seq": 1, "ts": time.time(),
                "correlation_id": cid, "reply_to": "edgekit/v1/offl/asker/offload/resp",
                "origin": "asker", "deadline_ms": 2000, "bundle": "digits",
                "bundle_id": agent.bundle_id, **over}
        return offload_schema.frame(head, blob)

    pub = answers.client
    for payload in (work("ok1"), work("ok1"), work("other", bundle_id="nope"),
                    work("outside", reply_to="edgekit/v1/elsewhere/asker/offload/resp"),
                    b"not a frame", work("ok2")):
        pub.publish("edgekit/v1/offl/w1/offload/work", payload, qos=1)
    answers.wait_for(lambda m: b'"ok2"' in m.raw, 10, "the last answer")
    time.sleep(0.3)
    got = [offload_schema.parse(m.raw, "offload/resp") for m in answers.of("offload/resp")]
    by_cid = {}
    for f in got:
        by_cid.setdefault(f.correlation_id, []).append(f)
    assert sorted(by_cid) == ["ok1", "ok2", "other"] and len(by_cid["ok1"]) == 1  # deduped
    assert by_cid["other"][0].header["status"] == "error"
    ok = by_cid["ok1"][0]
    assert ok.header["status"] == "ok" and ok.header["served_by"] == "w1"
    np.testing.assert_allclose(tensorwire.decode(ok.blob)["logits"], agent.infer(IMAGE)["logits"])
    assert worker.counts["rejected"] == 2 and worker.counts["served"] == 2
    worker.stop()
