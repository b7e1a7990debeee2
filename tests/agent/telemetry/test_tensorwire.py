"""The offload tensor encoding and payload headers: round trips, size, and refusal of bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from edgekit_agent.errors import TransportError
from edgekit_agent.telemetry import offload_schema, tensorwire
from edgekit_agent.telemetry.schema import SCHEMAS


def test_round_trip_every_dtype_and_compactness():
    rng = np.random.default_rng(1)
    tensors = {f"t_{d}": (rng.random((2, 3, 4)) * 100).astype(d) for d in tensorwire.DTYPES}
    tensors["scalar"] = np.float32(3.5) * np.ones((), np.float32)
    blob = tensorwire.encode(tensors)
    back = tensorwire.decode(blob)
    assert list(back) == list(tensors)
    for name, a in tensors.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape
        np.testing.assert_array_equal(back[name], a)
    image = {"image": rng.random((1, 8, 8, 1), dtype=np.float32)}
    size = len(tensorwire.encode(image))
    assert size == 256 + 4 + 1 + 1 + 5 + 2 + 16  # raw bytes plus a 29-byte header
    assert size < len(json.dumps(image["image"].tolist())) / 4  # vs JSON lists
    assert tensorwire.nbytes(tensorwire.encode(image)) == 256


def test_big_endian_input_travels_little_endian():
    a = np.arange(6, dtype=">i4").reshape(2, 3)
    back = tensorwire.decode(tensorwire.encode({"a": a}))["a"]
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize("blob, fragment", [
    (b"", "bad magic"), (b"EKT2\x00", "bad magic"), (b"EKT1\xff", "over the limit"),
    (b"EKT1\x01\x01a\x00\x01\xff\xff\xff\xff", "dimension over"),
    (b"EKT1\x01\x01a\x63\x01\x01\x00\x00\x00", "bad tensor header"),
    (b"EKT1\x01\x01a\x00\x01\x04\x00\x00\x00abc", "truncated"),
    (b"EKT1\x01\x01a\x00\x01\x01\x00\x00\x00abcdE", "trailing"),
    (b"EKT1\x02\x01a\x00\x00\x01a\x00\x00" + b"\x00" * 8, "repeats"),
    (b"EKT1\x01\x05ab", "truncated or bad"),
])
def test_bad_blobs_are_refused(blob, fragment):
    with pytest.raises(TransportError, match=fragment):
        tensorwire.decode(blob)


def test_random_corruption_never_crashes():
    good = tensorwire.encode({"x": np.ones((3, 4), np.float32), "y": np.arange(5, dtype=np.int64)})
    rnd = random.Random(7)
    refused = 0
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            b = b[:rnd.randrange(len(b))]
        try:
            tensorwire.decode(bytes(b))
        except TransportError:
            refused += 1
    assert refused > 500  # header damage is caught; damage inside the data is just other numbers


def test_unencodable_tensors_are_refused():
    with pytest.raises(TransportError, match="cannot be encoded"):
        tensorwire.encode({"s": np.array(["text"])})
    with pytest.raises(TransportError, match="over the limit"):
        tensorwire.encode({f"t{i}": np.zeros(1) for i in range(tensorwire.MAX_TENSORS + 1)})
    with pytest.raises(TransportError, match="byte limit"):
        tensorwire.encode({"big": np.zeros(tensorwire.MAX_BYTES // 4 + 1, np.float32)})


def _req(**over):
    return {"schema": SCHEMAS["offload/req"], "device": "d1", "seq": 3, "ts": 1.0e9,
            "correlation_id": "abc", "reply_to": "edgekit/v1/lab/d1/offload/resp",
            "deadline_ms": 500, "bundle": "digits", "bundle_id": "id1", **over}


def test_offload_headers():
    frame = offload_schema.parse(offload_schema.frame(_req(), b"EKT1\x00"), "offload/req")
    assert frame.correlation_id == "abc" and frame.blob == b"EKT1\x00"
    cases = [(_req(reply_to="edgekit/v1/lab/d1/cmd"), "reply_to"),
             (_req(reply_to="edgekit/v1/lab/+/offload/resp"), "reply_to"),
             (_req(deadline_ms=0), "deadline_ms"), (_req(correlation_id="a b"), "correlation_id"),
             (_req(device="../x"), "device"), (_req(extra=1), "extra"),
             (_req(exclude=["ok", "bad/name"]), "exclude"), (_req(ts=float("nan")), "ts")]
    for header, fragment in cases:
        payload = json.dumps(header).encode() + b"\n"
        with pytest.raises(TransportError, match=fragment):
            offload_schema.parse(payload, "offload/req")
    with pytest.raises(TransportError, match="no header line"):
        offload_schema.parse(b"{}" * 3000, "offload/req")
    resp = {"schema": SCHEMAS["offload/resp"], "device": "w", "seq": 0, "ts": 1.0,
            "correlation_id": "abc", "status": "maybe", "served_by": "w"}
    with pytest.raises(TransportError, match="status"):
        offload_schema.parse(offload_schema.frame(resp), "offload/resp")
