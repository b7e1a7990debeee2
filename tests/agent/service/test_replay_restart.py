"""Issue 10, finding 4: a captured signed command cannot be replayed after an agent restart.

Before, the replay cache lived in memory (and the window was ±300 s): a recorded ``rollback``
published again after a restart flipped the slot back. Now the ids are kept per fleet key in
the store (``replay-<key id>.json``, written before the command runs) for the 60 s window.
Real agent processes on a real Mosquitto; the slot is read from the store itself.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from edgekit_agent.bundle.signing import key_id, load_private_key, load_public_key
from edgekit_agent.errors import CommandError
from edgekit_agent.store.slots import BundleStore
from edgekit_agent.telemetry import schema

DEVICE = schema.Topics("lab", "dev1")


def _event(kind: str, cid: str):
    def match(m) -> bool:
        p = m.payload or {}
        return m.topic == DEVICE.event and p.get("kind") == kind and p.get("correlation_id") == cid
    return match


def _online(m) -> bool:
    return m.topic == DEVICE.status and (m.payload or {}).get("state") == "online"


def test_a_captured_rollback_replayed_after_a_restart_is_refused(broker, collect, agent_config,
                                                                 start_agent, keypair, power_bundle,
                                                                 power_bundle_v2, tmp_path):
    config = agent_config(broker, bundles=(power_bundle, power_bundle_v2), load={"rate": 0.0},
                          sensors={"speed": 0.01})
    store = BundleStore(tmp_path / "store")
    sub = collect(broker, f"{schema.ROOT}/lab/dev1/#")
    agent = start_agent(config)
    sub.wait_for(_online, 30, "online")
    captured = schema.sign_command(load_private_key(keypair[0]), "dev1", "rollback",
                                   command_id="captured-rollback")
    sub.client.publish(DEVICE.cmd, captured, qos=1).wait_for_publish(5)
    sub.wait_for(_event("cmd_result", "captured-rollback"), 20, "the rollback result")
    slot_after_rollback = store.active_slot()
    assert agent.stop(signal.SIGTERM) == 0, agent.output()

    mark = sub.mark()
    restarted = start_agent(config)
    sub.wait_for(_online, 30, "online again", since=mark)
    sub.client.publish(DEVICE.cmd, captured, qos=1).wait_for_publish(5)  # the attacker's replay
    refused = sub.wait_for(_event("cmd_error", "captured-rollback"), 20, "the replay refused",
                           since=mark).payload
    assert "was already executed (replay)" in refused["message"]
    time.sleep(0.5)
    assert store.active_slot() == slot_after_rollback  # not flipped back
    assert restarted.alive(), restarted.output()
    replay_file = tmp_path / "store" / f"replay-{key_id(load_public_key(keypair[1]))}.json"
    assert "captured-rollback" in json.loads(replay_file.read_text())["seen"]


def test_the_freshness_window_is_60_s_and_survives_a_new_verifier(keypair, tmp_path):
    verifier = schema.CommandVerifier("dev1", keypair[1], replay_dir=tmp_path)
    key = load_private_key(keypair[0])
    now = time.time()
    assert verifier.max_skew_s == 60.0
    verifier.parse(schema.sign_command(key, "dev1", "report_now", ts=now - 59, command_id="a"), now)
    for ts in (now - 61, now + 61):
        with pytest.raises(CommandError, match="outside the ±60 s window"):
            verifier.parse(schema.sign_command(key, "dev1", "report_now", ts=ts, command_id="b"),
                           now)
    again = schema.CommandVerifier("dev1", keypair[1], replay_dir=tmp_path)  # a restarted agent
    with pytest.raises(CommandError, match="already executed"):
        again.parse(schema.sign_command(key, "dev1", "report_now", ts=now - 59, command_id="a"), now)
