"""Issue 10, findings 6 and 7 on the agent's MQTT client: an unguessable default client id and
the MQTT 5 Maximum-Packet-Size CONNECT property (its effect: test_packet_size.py)."""

from __future__ import annotations

from edgekit_agent.config import MqttConfig
from edgekit_agent.defaults import MQTT_MAX_PACKET_BYTES
from edgekit_agent.telemetry.mqtt import Telemetry
from edgekit_agent.telemetry.outbox import Outbox
from edgekit_agent.telemetry.schema import Topics


def _client(tmp_path, name: str, **options):
    telemetry = Telemetry(MqttConfig(port=1, **options), Topics("lab", "dev1"),
                          Outbox(tmp_path / f"{name}.sqlite", 10))
    return telemetry._client


def test_default_client_id_is_not_guessable(tmp_path):
    ids = {_client(tmp_path, f"q{i}")._client_id.decode() for i in range(3)}
    assert len(ids) == 3 and all(i.startswith("edgekit-lab-dev1-") and len(i) == 29 for i in ids)
    assert _client(tmp_path, "fixed", client_id="pi-01")._client_id == b"pi-01"


def test_mqtt5_connect_asks_for_a_maximum_packet_size(tmp_path):
    assert _client(tmp_path, "d")._connect_properties.MaximumPacketSize == MQTT_MAX_PACKET_BYTES
    assert _client(tmp_path, "s", max_packet_bytes=4096)._connect_properties.MaximumPacketSize == 4096
    assert _client(tmp_path, "v3", protocol="3.1.1")._connect_properties is None
