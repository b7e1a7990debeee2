"""Data-parallel batches over agent worker subprocesses on a real Mosquitto: three workers beat
one by a measured factor, results come back in order, and a worker killed mid-batch loses no
item (its items are retried elsewhere)."""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest

from edgekit.fleet.coordinator.batches import BatchRunner
from edgekit.fleet.coordinator.service import Connection
from edgekit_agent.bundle.manifest import bundle_id
from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.service.agent import Agent

pytestmark = pytest.mark.host
ITEMS = 60


def test_batch_speedup_order_and_a_killed_worker(fleet_agent, broker, fleet_name, power_bundle,
                                                 keypair):
    manifest = open_bundle(power_bundle).manifest
    rng = np.random.default_rng(5)
    items = [{"image": rng.random((1, 8, 8, 1), dtype=np.float32)} for _ in range(ITEMS)]
    with Agent(power_bundle, public_key=keypair[1]) as reference:
        expected = [reference.infer(i)["logits"] for i in items]
        runner = BatchRunner(Connection(broker.url), fleet_name, bundle=manifest.name,
                             bundle_id=bundle_id(manifest), local=reference.infer).start()
        try:
            fleet_agent("w1", "pi4")
            assert runner.wait_for_workers(1, 30) == ["w1"]
            one = runner.run(items)
            w2 = fleet_agent("w2", "pi4")
            fleet_agent("w3", "pi4")
            assert runner.wait_for_workers(3, 30) == ["w1", "w2", "w3"]
            three = runner.run(items)
            killer = threading.Timer(0.25, lambda: w2.process.stop(signal.SIGKILL))
            killer.start()
            survived = runner.run(items)
            killer.join()
        finally:
            runner.stop()
    speedup = one.seconds / three.seconds
    print(f"one worker {one.seconds:.2f} s, three {three.seconds:.2f} s: {speedup:.2f}x; "
          f"killed w2 mid-batch: {survived.seconds:.2f} s, {survived.retries} retries, served "
          f"{ {w: survived.served_by.count(w) for w in set(survived.served_by)} }")
    for result in (one, three, survived):
        assert len(result.outputs) == ITEMS
        for got, want in zip(result.outputs, expected):  # gathered in item order
            np.testing.assert_allclose(got["logits"], want, atol=1e-4)
    assert set(one.served_by) == {"w1"} and set(three.served_by) == {"w1", "w2", "w3"}
    assert speedup >= 2.0
    assert survived.retries >= 1 and "w2" in survived.served_by  # some done before the kill
