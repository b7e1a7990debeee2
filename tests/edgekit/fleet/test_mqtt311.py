"""MQTT 3.1.1 end to end, on the embedded amqtt broker and on Mosquitto: an agent configured with
``[mqtt] protocol = "3.1.1"`` publishes status and telemetry and answers a signed command on the
``reply_to`` its payload names; `edgekit fleet status/cmd` fall back from MQTT 5 by themselves."""

from __future__ import annotations

import json
import subprocess
import sys

import paho.mqtt.client as mqtt
import pytest

from edgekit.fleet.broker import connect, plain_filter
from edgekit_agent.bundle.signing import load_private_key
from edgekit_agent.errors import TransportError
from edgekit_agent.telemetry import schema

pytestmark = pytest.mark.host
DEVICE = schema.Topics("lab", "dev1")


@pytest.fixture(params=["amqtt", "mosquitto"])
def any_broker(request):
    return request.getfixturevalue("amqtt_broker" if request.param == "amqtt" else "broker")


def is_event(kind: str, cid: str):
    return lambda m: (m.topic == DEVICE.event and (m.payload or {}).get("kind") == kind
                      and m.payload.get("correlation_id") == cid)


def test_agent_on_mqtt311_status_telemetry_and_signed_command(any_broker, collect, agent_config,
                                                              start_agent, keypair):
    sub = collect(any_broker, f"{schema.ROOT}/lab/dev1/#")
    replies = collect(any_broker, "ops/replies/#")
    agent = start_agent(agent_config(any_broker, mqtt={"protocol": "3.1.1"}, load={"rate": 20.0},
                                     sensors={"speed": 0.01}))
    online = sub.wait_for(lambda m: m.topic == DEVICE.status and m.payload["state"] == "online",
                          30, "status online")
    assert online.payload["device"] == "dev1" and online.payload["bundle"]["name"] == "digits"
    first = sub.wait_for(lambda m: m.topic == DEVICE.telemetry, 15, "telemetry").payload
    later = sub.wait_for(lambda m: m.topic == DEVICE.telemetry and m.payload["seq"] > first["seq"]
                         and m.payload["inference"]["count_interval"] > 0, 15,
                         "telemetry with inferences").payload
    assert later["inference"]["per_s"] > 5.0 and later["mode"] == "performance"

    key = load_private_key(keypair[0])
    cmd = schema.sign_command(key, "dev1", "report_now", command_id="r311",
                              reply_to="ops/replies/tester")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tester-311",
                      protocol=mqtt.MQTTv311)
    pub.connect(any_broker.host, any_broker.port)
    pub.loop_start()
    try:
        pub.publish(DEVICE.cmd, cmd, qos=1).wait_for_publish(10)
        result = sub.wait_for(is_event("cmd_result", "r311"), 15, "cmd_result").payload
        reply = replies.wait_for(lambda m: True, 15, "the answer on reply_to").payload
    finally:
        pub.loop_stop()
        pub.disconnect()
    assert reply["kind"] == "cmd_result" and reply["correlation_id"] == "r311"
    assert reply["data"]["seq"] == result["data"]["seq"] and reply["data"]["action"] == "report_now"
    assert agent.alive(), agent.output()


def test_fleet_tools_fall_back_to_mqtt311_on_amqtt(amqtt_broker, agent_config, start_agent,
                                                   keypair, edgekit_cli, cli_error):
    agent = start_agent(agent_config(amqtt_broker, mqtt={"protocol": "3.1.1"},
                                     sensors={"speed": 0.01}))
    status = edgekit_cli("fleet", "status", "--broker", amqtt_broker.url, "--fleet", "lab",
                         "--wait", "3", "--json")
    assert status.returncode == 0, status.stderr
    (row,) = [r for r in json.loads(status.stdout) if r["device"] == "dev1"]
    assert row["state"] == "online" and row["bundle"] == "digits"

    answer = edgekit_cli("fleet", "cmd", "dev1", "set_mode", "--arg", "mode=eco", "--fleet", "lab",
                         "--key", keypair[0], "--broker", amqtt_broker.url, "--json")
    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)["data"]
    assert (data["from"], data["mode"]) == ("performance", "eco")

    forced = edgekit_cli("fleet", "status", "--broker", amqtt_broker.url, "--protocol", "5")
    cli_error(forced, f"broker {amqtt_broker.url} refused the connection", "protocol version")
    assert agent.alive(), agent.output()


def test_connect_reports_the_agreed_protocol(amqtt_broker, broker):
    for b, expected in ((amqtt_broker, "3.1.1"), (broker, "5")):
        client = connect(b.url, ["edgekit/v1/x/+/status"], lambda msg: None)
        try:
            assert client.edgekit_protocol == expected
        finally:
            client.loop_stop()
            client.disconnect()
    with pytest.raises(TransportError, match="refused the connection"):
        connect(amqtt_broker.url, ["a/b"], lambda msg: None, protocol="5")


def test_shared_subscriptions_become_plain_on_311():
    assert plain_filter("$share/edgekit/edgekit/v1/f/+/offload/req") == "edgekit/v1/f/+/offload/req"
    assert plain_filter("edgekit/v1/f/+/status") == "edgekit/v1/f/+/status"
    assert plain_filter("$share/only-group") == "$share/only-group"  # not a share: left alone


def test_embedded_broker_bad_bind_is_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "edgekit.fleet.embedded", "--bind", "nohost:xyz"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: must be HOST:PORT (key '--bind', "
                                                "value 'nohost:xyz')"]
