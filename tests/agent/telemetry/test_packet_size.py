"""Issue 10, finding 7: a 200 MB publish on a device's ``cmd`` topic, real Mosquitto, agent
subprocess. Two independent guards, each tested alone:

1. the agent's MQTT 5 CONNECT property Maximum-Packet-Size (``mqtt.max_packet_bytes``): an
   unlimited broker accepts the 200 MB message but must not forward it to this client, and
   drops it;
2. the broker's ``max_packet_size`` (what ``edgekit fleet broker-config`` writes): the broker
   disconnects the publisher, so nothing reaches even an MQTT 3.1.1 agent (which cannot ask
   for a limit).

Either way the agent's resident memory (VmRSS, and the peak VmHWM) grows by less than 8 MB
and a signed command sent afterwards is still answered.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from edgekit_agent.bundle.signing import load_private_key
from edgekit_agent.defaults import MQTT_MAX_PACKET_BYTES
from edgekit_agent.telemetry import schema

BIG = 200 << 20
GROWTH_LIMIT_KB = 8 << 10


def _memory_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def _publisher(broker) -> tuple[mqtt.Client, threading.Event]:
    gone = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker", protocol=mqtt.MQTTv5)
    c.on_disconnect = lambda *a: gone.set()
    c.connect(broker.host, broker.port, keepalive=30)
    c.loop_start()
    return c, gone


def _settled_agent(broker, agent_config, start_agent, collect, **mqtt_options):
    seen = collect(broker, "edgekit/v1/lab/dev1/#")
    agent = start_agent(agent_config(broker, mqtt=mqtt_options, telemetry={"interval_s": 0.5},
                                     load={"rate": 0.0}))
    seen.wait_for(lambda m: m.topic.endswith("/status") and m.payload["state"] == "online", 60,
                  "online status")
    for _ in range(3):  # imports and first inferences done: memory is flat from here
        seen.wait_for(lambda m: m.topic.endswith("/telemetry"), 30, "telemetry", since=seen.mark())
    return agent, seen


def _still_answers(broker, seen, keypair) -> None:
    since = seen.mark()
    cmd = schema.sign_command(load_private_key(keypair[0]), "dev1", "report_now", command_id="after-big")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="operator", protocol=mqtt.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(schema.Topics("lab", "dev1").cmd, cmd, qos=1).wait_for_publish(10)
    seen.wait_for(lambda m: m.topic.endswith("/event") and m.payload.get("correlation_id") == "after-big"
                  and m.payload["kind"] == "cmd_result", 30, "the answer to a later command", since=since)
    c.loop_stop()
    c.disconnect()


def test_agent_max_packet_size_keeps_a_200mb_cmd_out(own_broker, agent_config, start_agent,
                                                     collect, keypair):
    agent, seen = _settled_agent(own_broker, agent_config, start_agent, collect)
    before = _memory_kb(agent.proc.pid)
    attacker, gone = _publisher(own_broker)
    info = attacker.publish(schema.Topics("lab", "dev1").cmd, bytes(BIG), qos=1)
    info.wait_for_publish(120)  # the broker took it (PUBACK): it is the agent's limit that acts
    assert info.is_published() and not gone.is_set()
    _still_answers(own_broker, seen, keypair)
    after = _memory_kb(agent.proc.pid)
    attacker.loop_stop()
    attacker.disconnect()
    growth = {k: after[k] - before[k] for k in before}
    print(f"agent limit {MQTT_MAX_PACKET_BYTES} B, 200 MB cmd: memory before {before} kB, growth {growth} kB")
    assert growth["VmRSS"] < GROWTH_LIMIT_KB and growth["VmHWM"] < GROWTH_LIMIT_KB, growth
    assert agent.alive()


def test_broker_max_packet_size_refuses_a_200mb_publish(tmp_path, broker_class, agent_config,
                                                        start_agent, collect, keypair):
    work = tmp_path / "limited"
    work.mkdir()
    broker = broker_class(work, security=f"allow_anonymous true\nmax_packet_size {MQTT_MAX_PACKET_BYTES}\n")
    broker.start()
    try:
        agent, seen = _settled_agent(broker, agent_config, start_agent, collect, protocol="3.1.1")
        before = _memory_kb(agent.proc.pid)
        attacker, gone = _publisher(broker)
        attacker.publish(schema.Topics("lab", "dev1").cmd, bytes(BIG), qos=1)
        assert gone.wait(120), "the broker kept a publisher of a 200 MB packet"
        _still_answers(broker, seen, keypair)
        after = _memory_kb(agent.proc.pid)
        attacker.loop_stop()
        growth = {k: after[k] - before[k] for k in before}
        print(f"broker limit, MQTT 3.1.1 agent, 200 MB cmd: growth {growth} kB")
        assert growth["VmRSS"] < GROWTH_LIMIT_KB and growth["VmHWM"] < GROWTH_LIMIT_KB, growth
    finally:
        broker.stop()
