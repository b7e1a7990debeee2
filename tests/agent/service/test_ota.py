"""The device side of OTA without a broker: the ``ota`` wire checks, resumable staging and the
health judgement (the end-to-end runs are in tests/edgekit/fleet/test_deploy.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from edgekit_agent.bundle.signing import generate_keypair, load_private_key, load_public_key
from edgekit_agent.errors import TransportError
from edgekit_agent.service.ota import HealthGate, HealthSample, Staging, judge
from edgekit_agent.telemetry import schema

BUNDLE = os.urandom(10_000)
SHA = hashlib.sha256(BUNDLE).hexdigest()
CHUNK = 4096


def _offer(key, **over):
    body = schema.ota_body("offer", "dev1", "r1", sha256=SHA, size=len(BUNDLE), chunk_size=CHUNK,
                           chunks=3, window=2, name="digits", version="2", bundle_id="ab" * 8,
                           expires=4e9, health={"window_s": 1.0})
    return schema.sign_ota(key, {**body, **over})


def _chunk(index, data=None, **over):
    data = BUNDLE[index * CHUNK:(index + 1) * CHUNK] if data is None else data
    body = schema.ota_body("chunk", "dev1", "r1", sha256=SHA, index=index, total=3,
                           chunk_sha256=hashlib.sha256(data).hexdigest(),
                           data=base64.b64encode(data).decode())
    return schema.encode({**body, **over})


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    private, public = generate_keypair(tmp_path_factory.mktemp("k") / "fleet")
    return load_private_key(private), load_public_key(public)


def test_offer_and_chunks_parse_and_are_checked(keys, tmp_path):
    private, public = keys
    offer = schema.parse_ota(_offer(private), "dev1", public)
    assert offer["type"] == "offer" and offer["chunks"] == 3 and offer["health"] == {"window_s": 1.0}
    schema.validate(offer, "ota")
    chunk = schema.parse_ota(_chunk(1), "dev1", public)
    assert chunk["data"] == BUNDLE[CHUNK:2 * CHUNK]

    other = load_private_key(generate_keypair(tmp_path / "other")[0])
    tampered = json.loads(_offer(private))
    tampered["size"] = 9_999
    refusals = {
        "signed by another key": (_offer(other), "offer signature rejected"),
        "changed after signing": (json.dumps(tampered).encode(), "or changed after signing"),
        "chunking that does not add up": (_offer(private, chunks=5), "chunks: 5 is not ceil"),
        "unsigned": (schema.encode(json.loads(_offer(private)) | {"sig": None}), "is not signed"),
        "for another device": (_offer(private, device="dev2"), "device: 'dev2'"),
        "bad chunk hash": (_chunk(0, chunk_sha256="0" * 64), "does not match its chunk_sha256"),
        "index past the end": (_chunk(3, data=b"x"), "index: 3 is not an integer in 0..2"),
        "chunk too big": (_chunk(0, data=b"x" * (schema.MAX_OTA_CHUNK_BYTES + 1)), "at most"),
        "unknown key": (schema.encode(json.loads(_chunk(0)) | {"exec": "rm"}), "exec"),
        "not JSON": (b"{nope", "ota payload is not JSON"),
        "oversized offer": (_offer(private, size=schema.MAX_OTA_BUNDLE_BYTES + 1, chunks=1),
                            "size:"),
    }
    for what, (raw, fragment) in refusals.items():
        with pytest.raises(TransportError) as err:
            schema.parse_ota(raw, "dev1", public)
        assert fragment in str(err.value), (what, str(err.value))
        assert "\n" not in str(err.value)
    with pytest.raises(TransportError, match="no fleet public key"):
        schema.parse_ota(_offer(private), "dev1", None)


def test_allow_downgrade_is_a_signed_boolean_of_the_offer(keys):
    private, public = keys
    assert schema.parse_ota(_offer(private, allow_downgrade=True), "dev1", public)["allow_downgrade"]
    assert "allow_downgrade" not in schema.parse_ota(_offer(private), "dev1", public)
    with pytest.raises(TransportError, match="allow_downgrade: 'yes' is not true or false"):
        schema.parse_ota(_offer(private, allow_downgrade="yes"), "dev1", public)
    added = json.loads(_offer(private)) | {"allow_downgrade": True}  # by someone without the key
    with pytest.raises(TransportError, match="signature"):
        schema.parse_ota(json.dumps(added).encode(), "dev1", public)


def test_staging_resumes_by_sha_and_next_chunk(keys, tmp_path):
    offer = schema.parse_ota(_offer(keys[0]), "dev1", keys[1])
    s = Staging(tmp_path / ".ota", offer)
    assert (s.next, s.total, s.complete) == (0, 3, False)
    assert s.write(0, BUNDLE[:CHUNK]) and not s.write(0, BUNDLE[:CHUNK])  # a repeat is ignored
    assert not s.write(2, BUNDLE[2 * CHUNK:])  # out of order: ignored, asked for again later
    with pytest.raises(TransportError, match="expected 4096"):
        s.write(1, b"short")
    with s.path.open("ab") as f:  # a write torn by a power cut
        f.write(BUNDLE[CHUNK:CHUNK + 100])
    resumed = Staging(tmp_path / ".ota", offer)
    assert resumed.next == 1 and resumed.path.stat().st_size == CHUNK
    assert resumed.write(1, BUNDLE[CHUNK:2 * CHUNK]) and resumed.write(2, BUNDLE[2 * CHUNK:])
    assert resumed.complete
    resumed.verify()
    assert resumed.path.read_bytes() == BUNDLE

    bad = Staging(tmp_path / "bad", offer)
    for i in range(3):
        bad.write(i, bytes(bad.expected_len(i)))
    with pytest.raises(TransportError, match="the offer said 10000 bytes"):
        bad.verify()
    assert not bad.path.exists()  # a corrupt transfer is not kept


def test_health_judgement():
    gate = HealthGate(window_s=10, max_error_rate=0.05, max_latency_ratio=2.0, latency_slack_ms=1.0)
    before = HealthSample(500, 0, 2.0)
    assert judge(gate, before, HealthSample(200, 0, 4.9)) is None  # 2 x 2.0 + 1.0 = 5.0 allowed
    assert judge(gate, before, HealthSample(200, 10, 2.0)) is None  # 10/210 = 0.048
    why = judge(gate, before, HealthSample(200, 0, 5.5))
    assert why == "p95 latency 5.50 ms > 5.00 ms (2 x 2.00 ms before + 1 ms)"
    why = judge(gate, before, HealthSample(150, 50, 2.0))
    assert why == "inference error rate 0.250 > 0.05 (50 of 200 in 10 s)"
    assert judge(gate, None, HealthSample(10, 0, 99.0)) is None  # no baseline: latency not judged
    assert judge(gate, before, HealthSample(0, 0, None)) is None  # no load: nothing to judge
